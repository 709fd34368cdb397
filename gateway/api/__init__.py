"""HTTP transport: one module per resource."""
