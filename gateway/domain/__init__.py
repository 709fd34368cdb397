"""Domain types: money, the checkout request, sessions and the API error table."""
