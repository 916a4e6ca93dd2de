-- wrk script: POST the OAuth2 password form to /api/auth/token and count responses by status.
-- The form body is read from the environment (BENCH_LOGIN_BODY), set by bench/run.py.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_LOGIN_BODY")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

s2xx, s429, s503, sother = 0, 0, 0, 0

function response(status, headers, body)
  if status >= 200 and status < 300 then s2xx = s2xx + 1
  elseif status == 429 then s429 = s429 + 1
  elseif status == 503 then s503 = s503 + 1
  else sother = sother + 1 end
end

function done(summary, latency, requests)
  local t = {s2xx = 0, s429 = 0, s503 = 0, sother = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  io.write(string.format('STATUS {"2xx": %d, "429": %d, "503": %d, "other": %d}\n',
    t.s2xx, t.s429, t.s503, t.sother))
end
