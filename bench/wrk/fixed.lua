-- One request, always the same: BENCH_METHOD (default GET) of BENCH_PATH, with the bearer token
-- and BENCH_BODY. wrk formats it once and sends it again and again.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.path = os.getenv("BENCH_PATH") or error("BENCH_PATH is not set")
wrk.body = body
for name, value in pairs(headers) do
  wrk.headers[name] = value
end
