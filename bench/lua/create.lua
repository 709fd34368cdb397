-- POST /api/v1/sessions with a fresh Idempotency-Key and orderReference on every request.
package.path = package.path .. ";./bench/lua/?.lua"
require("common")

local token = os.getenv("BENCH_TOKEN")
local run = os.getenv("BENCH_RUN")
local template = os.getenv("BENCH_BODY")
local counter = 0

function init(args)
  statuses = {}
end

function request()
  counter = counter + 1
  local unique = string.format("%s-%d-%d", run, tid, counter)
  local body = string.gsub(template, "__ORDER__", unique)
  return wrk.format("POST", "/api/v1/sessions", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = unique,
  }, body)
end
