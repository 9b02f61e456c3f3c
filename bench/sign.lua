-- wrk script: POST batches of unique HubSpot contact events, each request signed with
-- HubSpot's v3 signature (base64 HMAC-SHA256 of method + uri + body + timestamp).
--
-- Arguments (after `--` on the wrk command line):
--   secret batch nonce contacts [stage ...]
-- `nonce` (1000-8999) keeps event ids unique across runs on one database; each wrk
-- thread numbers its events itself, so no two events of a run share an eventId.
-- `contacts` > 0 draws each event's objectId uniformly from 1..contacts (lifecycle
-- changes across a portal); 0 gives every event a contact of its own, with increasing
-- ids (an import).
--
-- SHA-256, HMAC and base64 are pure LuaJIT on the `bit` library (wrk embeds LuaJIT and
-- ships no crypto). The HMAC key's inner and outer pad blocks are hashed once in
-- init(), so a request costs only its own message blocks plus one outer block.
--
-- done() prints one line, `BENCH_RESULT {json}`, that bench/wrk.py reads.

local bit = require("bit")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit = bit.rshift, bit.lshift, bit.ror, bit.tobit
local byte, char, rep, fmt = string.byte, string.char, string.rep, string.format
local concat, floor = table.concat, math.floor

-- SHA-256 ---------------------------------------------------------------------------

local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
for i = 1, 64 do K[i] = tobit(K[i]) end

local H0 = {
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
}
for i = 1, 8 do H0[i] = tobit(H0[i]) end

local W = {}

-- Hash the 64-byte block of `s` that starts after byte `off` into state `H`.
local function compress(H, s, off)
  for j = 0, 15 do
    local a, b, c, d = byte(s, off + 1, off + 4)
    W[j] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    off = off + 4
  end
  for j = 16, 63 do
    local w15, w2 = W[j - 15], W[j - 2]
    local s0 = bxor(ror(w15, 7), ror(w15, 18), rshift(w15, 3))
    local s1 = bxor(ror(w2, 17), ror(w2, 19), rshift(w2, 10))
    W[j] = tobit(W[j - 16] + s0 + W[j - 7] + s1)
  end
  local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
  for j = 0, 63 do
    local s1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
    local ch = bxor(band(e, f), band(bnot(e), g))
    local t1 = h + s1 + ch + K[j + 1] + W[j]
    local s0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
    local maj = bxor(band(a, b), band(a, c), band(b, c))
    h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + s0 + maj)
  end
  H[1], H[2], H[3], H[4] = tobit(H[1] + a), tobit(H[2] + b), tobit(H[3] + c), tobit(H[4] + d)
  H[5], H[6], H[7], H[8] = tobit(H[5] + e), tobit(H[6] + f), tobit(H[7] + g), tobit(H[8] + h)
end

local function be32(x)
  return char(band(rshift(x, 24), 255), band(rshift(x, 16), 255), band(rshift(x, 8), 255),
    band(x, 255))
end

-- SHA-256 of `msg`, continuing from `state` after `done` bytes (a multiple of 64).
local function sha256_from(state, done, msg)
  local H = { state[1], state[2], state[3], state[4], state[5], state[6], state[7], state[8] }
  local total = done + #msg
  local zeros = (55 - total) % 64
  local bits = total * 8
  msg = msg .. "\128" .. rep("\0", zeros) .. be32(floor(bits / 4294967296)) .. be32(bits)
  for off = 0, #msg - 64, 64 do compress(H, msg, off) end
  return H
end

local function digest(H)
  return be32(H[1]) .. be32(H[2]) .. be32(H[3]) .. be32(H[4]) .. be32(H[5]) .. be32(H[6])
    .. be32(H[7]) .. be32(H[8])
end

-- HMAC-SHA256 with precomputed pad states ---------------------------------------------

local function pad_state(key, pad)
  local bytes = {}
  for i = 1, 64 do bytes[i] = char(bxor(byte(key, i) or 0, pad)) end
  local H = { H0[1], H0[2], H0[3], H0[4], H0[5], H0[6], H0[7], H0[8] }
  compress(H, concat(bytes), 0)
  return H
end

local inner, outer

local function hmac_init(key)
  if #key > 64 then key = digest(sha256_from(H0, 0, key)) end
  inner, outer = pad_state(key, 0x36), pad_state(key, 0x5c)
end

local function hmac(msg)
  return digest(sha256_from(outer, 64, digest(sha256_from(inner, 64, msg))))
end

-- base64 -------------------------------------------------------------------------------

local B64 = {}
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
for i = 1, 64 do B64[i - 1] = alphabet:sub(i, i) end

local function base64(s)
  local out, n = {}, 0
  for i = 1, #s, 3 do
    local a, b, c = byte(s, i, i + 2)
    local v = lshift(a, 16) + lshift(b or 0, 8) + (c or 0)
    n = n + 1
    out[n] = B64[rshift(v, 18)] .. B64[band(rshift(v, 12), 63)]
      .. (b and B64[band(rshift(v, 6), 63)] or "=") .. (c and B64[band(v, 63)] or "=")
  end
  return concat(out)
end

-- wrk callbacks ------------------------------------------------------------------------

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local batch, nonce, contacts, stages, uri, counter, thread_id
local events = {}

function init(args)
  hmac_init(args[1])
  batch = tonumber(args[2])
  nonce = tonumber(args[3])
  contacts = tonumber(args[4]) or 0
  stages = {}
  for i = 5, #args do stages[#stages + 1] = args[i] end
  if #stages == 0 then stages = { "lead", "customer" } end
  -- Starlette signs against str(request.url): scheme, the Host header wrk sends, path.
  local host = wrk.host
  if wrk.port then host = host .. ":" .. wrk.port end
  uri = wrk.scheme .. "://" .. host .. wrk.path
  thread_id = tonumber(_G.tid) or 0 -- set by setup() through thread:set
  counter = 0
  math.randomseed(nonce * 100 + thread_id)
end

function request()
  local now_ms = fmt("%d", os.time()) .. "000"
  for i = 1, batch do
    counter = counter + 1
    -- 16 digits at most (nonce 4, thread 2, counter 10): below 2^53, exact everywhere.
    local event_id = fmt("%d%02d%010d", nonce, thread_id, counter)
    local object_id
    if contacts > 0 then
      object_id = math.random(1, contacts)
    else
      object_id = fmt("%d%02d%07d", nonce % 100 + 1, thread_id, counter % 10000000)
    end
    events[i] = '{"eventId":' .. event_id .. ',"subscriptionId":4065,"portalId":62515,'
      .. '"appId":1160452,"occurredAt":' .. now_ms .. ',"subscriptionType":'
      .. '"contact.propertyChange","attemptNumber":0,"objectId":' .. object_id
      .. ',"changeSource":"CRM","propertyName":"lifecyclestage","propertyValue":"'
      .. stages[counter % #stages + 1] .. '"}'
  end
  local body = "[" .. concat(events, ",", 1, batch) .. "]"
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-HubSpot-Request-Timestamp"] = now_ms,
    ["X-HubSpot-Signature-v3"] = base64(hmac("POST" .. uri .. body .. now_ms)),
  }
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(fmt(
    'BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
