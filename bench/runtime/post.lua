-- wrk script: POST one fixed body (path in $BENCH_BODY) and print a JSON summary at the end.
-- $BENCH_CONTENT_TYPE sets Content-Type; $BENCH_HEADER_LEN (binary tensor extension) sets
-- Inference-Header-Content-Length.
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
local hlen = os.getenv("BENCH_HEADER_LEN")
if hlen and hlen ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = hlen
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
