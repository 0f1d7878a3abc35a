-- wrk script: POSTs chat requests, rotating over the users in BENCH_USERS
-- (lines "<token> <org id>"), and prints a JSON summary line at the end.
local users = {}
local counter = 0

function init(args)
  for line in io.lines(os.getenv("BENCH_USERS")) do
    local token, org = line:match("^(%S+) (%S+)$")
    if token then users[#users + 1] = { token = token, org = org } end
  end
end

function request()
  counter = counter + 1
  local u = users[(counter % #users) + 1]
  local body = '{"message":"How do I record a contribution for this week?","org_id":"' .. u.org .. '"}'
  return wrk.format("POST", nil, {
    ["content-type"] = "application/json",
    ["authorization"] = "Bearer " .. u.token,
    ["x-forwarded-for"] = "10.20." .. (counter % 200) .. "." .. (counter % 250 + 1),
  }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50":%d,"p95":%d,"p99":%d,"socket_errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
