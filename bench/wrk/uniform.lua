-- Each request for a customer drawn uniformly from c000001 .. c<BENCH_CUSTOMERS> (6 digits, as
-- bench/seed.sql names them): BENCH_METHOD (default GET) of BENCH_PATH, in which "%s" stands
-- for the customer id, with the bearer token and BENCH_BODY.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local method = os.getenv("BENCH_METHOD") or "GET"
local template = os.getenv("BENCH_PATH") or error("BENCH_PATH is not set")
local customers = tonumber(os.getenv("BENCH_CUSTOMERS") or "10000")

function request()
  local customer = string.format("c%06d", math.random(1, customers))
  return wrk.format(method, string.format(template, customer), headers, body)
end
