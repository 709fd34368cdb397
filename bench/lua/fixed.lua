-- The same request every time (idempotent replay, GET session, routing simulate).
package.path = package.path .. ";./bench/lua/?.lua"
require("common")

local method = os.getenv("BENCH_METHOD")
local path = os.getenv("BENCH_PATH")
local body = os.getenv("BENCH_BODY")
local headers = {
  ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
  ["Content-Type"] = "application/json",
}
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  headers["Idempotency-Key"] = key
end

function init(args)
  statuses = {}
end

function request()
  if method == "GET" then
    return wrk.format("GET", path, headers)
  end
  return wrk.format(method, path, headers, body)
end
