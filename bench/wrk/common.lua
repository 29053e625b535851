-- Shared by the wrk scripts of bench/harness.py. Read from the environment:
--   BENCH_TOKEN   the bearer token sent with every request
--   BENCH_BODY    the JSON body of POST requests (optional)
-- done() prints one line "BENCH_JSON {...}" that the harness parses.

local token = os.getenv("BENCH_TOKEN")
if token == nil or token == "" then
  error("BENCH_TOKEN is not set")
end

body = os.getenv("BENCH_BODY")
if body == "" then
  body = nil
end

headers = { ["Authorization"] = "Bearer " .. token }
if body ~= nil then
  headers["Content-Type"] = "application/json"
end

-- Each wrk thread has its own Lua state: number them, so their random streams differ.
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_number", counter)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99_9":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
