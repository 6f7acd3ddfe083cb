-- wrk script of the rush (bench/wrk_booking.py runs it): POST /bookings as many customers.
--
--   wrk -t1 -c64 -d10s -s bench/wrk_booking.lua URL -- FIXTURES EVENTS KEY_PREFIX START [TYPES]
--
-- FIXTURES: a file of "token address" lines, one per customer. Each request goes out as the
-- next customer in turn (from START, so consecutive runs keep the rotation even): its bearer
-- token and, as X-Forwarded-For, its own address (the server trusts the loopback as its load
-- balancer), so per-customer and per-address rate limits see a crowd, not one client.
-- EVENTS: comma-separated event ids, one picked at random per request.
-- KEY_PREFIX: "-" for none, else every request carries Idempotency-Key: <prefix><n>, unique.
-- TYPES: "-" (or absent) books {"event_id", "quantity": 1}, the event's default type; else
-- "ID:WEIGHT,ID:WEIGHT,..." books {"event_id", "lines": [{"ticket_type_id", "quantity": 1}]}
-- with the type drawn at random per request in proportion to its weight.
-- done() prints one line "BENCH_JSON {...}": statuses, refusal codes, distinct booking ids,
-- requests generated and answered (the difference was in flight when wrk stopped), latency,
-- and successes by the ticket_type_id the answer's first line names.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  tokens, addresses = {}, {}
  for line in io.lines(args[1]) do
    local token, address = line:match("^(%S+)%s+(%S+)$")
    if token then
      tokens[#tokens + 1] = "Bearer " .. token
      addresses[#addresses + 1] = address
    end
  end
  events = {}
  for id in args[2]:gmatch("%d+") do
    events[#events + 1] = id
  end
  key_prefix = args[3] ~= "-" and args[3] or nil
  turn = tonumber(args[4]) or 0
  -- One pre-rendered body per type, repeated WEIGHT times: a uniform pick is a weighted one.
  bodies = {}
  for _, event in ipairs(events) do
    local list = {}
    if args[5] and args[5] ~= "-" then
      for id, weight in args[5]:gmatch("(%d+):(%d+)") do
        local body = '{"event_id":' .. event .. ',"lines":[{"ticket_type_id":' .. id .. ',"quantity":1}]}'
        for _ = 1, tonumber(weight) do
          list[#list + 1] = body
        end
      end
    else
      list[1] = '{"event_id":' .. event .. ',"quantity":1}'
    end
    bodies[#bodies + 1] = list
  end
  sent, answered, distinct, duplicates = 0, 0, 0, 0
  statuses, codes, seen, types = {}, {}, {}, {}
  math.randomseed(os.time())
end

function request()
  local i = turn % #tokens + 1
  turn = turn + 1
  sent = sent + 1
  local headers = {
    ["Authorization"] = tokens[i],
    ["X-Forwarded-For"] = addresses[i],
    ["Content-Type"] = "application/json",
  }
  if key_prefix then
    headers["Idempotency-Key"] = key_prefix .. turn
  end
  local list = #bodies == 1 and bodies[1] or bodies[math.random(#bodies)]
  return wrk.format("POST", "/bookings", headers, #list == 1 and list[1] or list[math.random(#list)])
end

function response(status, headers, body)
  answered = answered + 1
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status >= 200 and status < 300 then
    local id = body and body:match('"id"%s*:%s*(%d+)')
    if id then
      if seen[id] then
        duplicates = duplicates + 1
      else
        seen[id] = true
        distinct = distinct + 1
      end
    end
    local type_id = body and body:match('"ticket_type_id"%s*:%s*(%d+)')
    if type_id then
      types[type_id] = (types[type_id] or 0) + 1
    end
  else
    local code = body and body:match('"code"%s*:%s*"([^"]*)"') or key
    codes[code] = (codes[code] or 0) + 1
  end
end

local function json(value)
  if type(value) == "table" then
    local parts = {}
    for k, v in pairs(value) do
      parts[#parts + 1] = string.format("%q:%s", tostring(k), json(v))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return tostring(value)
end

function done(summary, latency, requests)
  local out = {
    statuses = {}, codes = {}, types = {}, sent = 0, answered = 0, distinct_ids = 0, duplicate_ids = 0,
    turn_end = 0, duration_us = summary.duration, requests = summary.requests,
    socket_errors = summary.errors,
    latency_us = { p50 = latency:percentile(50), p99 = latency:percentile(99), max = latency.max },
  }
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("statuses")) do out.statuses[k] = (out.statuses[k] or 0) + v end
    for k, v in pairs(thread:get("codes")) do out.codes[k] = (out.codes[k] or 0) + v end
    for k, v in pairs(thread:get("types")) do out.types[k] = (out.types[k] or 0) + v end
    out.sent = out.sent + thread:get("sent")
    out.answered = out.answered + thread:get("answered")
    out.distinct_ids = out.distinct_ids + thread:get("distinct")
    out.duplicate_ids = out.duplicate_ids + thread:get("duplicates")
    out.turn_end = math.max(out.turn_end, thread:get("turn"))
  end
  io.write("BENCH_JSON " .. json(out) .. "\n")
end
