-- FreightOps user model for wrk: every connection is one logged-in user.
--
--   wrk -t1 -c1000 -d60s --timeout 10s -s bench/load/freightops.lua \
--       http://127.0.0.1:8000 -- <users-file> <think-ms> <threads>
--
-- <users-file> has one line per user: "<token> <tenant-id> <id,id,...>"
-- (written by bench/load/run.py, which opens one login session per user).
-- Thread k takes the users k, k+threads, ...; wrk has no per-connection
-- hook, so each thread hands its users out round-robin, one per request:
-- with one connection per user and a think time per request, every user
-- sends about one request per think time.
--
-- done() prints one BENCH_RESULT line (JSON) that bench/wrk.py reads, with
-- the responses counted by status.
--
-- Mix: ~70 % list/detail reads, 20 % dashboard, 10 % writes, each followed
-- by a think time drawn uniformly from [0.5, 1.5] x <think-ms>.

local threads = {}
local users = {}
local counter = 0
local think_ms = 1000
statuses = {}  -- global: done() reads it with thread:get()

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

local function split_ids(text)
   local ids = {}
   for id in string.gmatch(text, "%d+") do ids[#ids + 1] = id end
   return ids
end

function init(args)
   local path = args[1]
   think_ms = tonumber(args[2] or "1000")
   local nthreads = tonumber(args[3] or "1")
   local index = tonumber(thread_index or 0)
   local line_no = 0
   for line in io.lines(path) do
      if line_no % nthreads == index then
         local token, tenant, ids = string.match(line, "^(%S+)%s+(%S+)%s+(%S*)$")
         if token then
            users[#users + 1] = {
               headers = {
                  ["Authorization"] = "Bearer " .. token,
                  ["Accept-Encoding"] = "br, gzip",
                  ["Content-Type"] = "application/json",
               },
               ids = split_ids(ids),
            }
         end
      end
      line_no = line_no + 1
   end
   if #users == 0 then error("no users for thread " .. index .. " in " .. path) end
   math.randomseed(os.time() + index * 7919)
end

local list_paths = {
   "/api/shipments?limit=25",
   "/api/shipments?status=in_transit&limit=25",
   "/api/shipments?status=delivered&limit=25",
   "/api/shipments?status=pending&limit=25",
   "/api/loads?limit=25",
   "/api/carriers",
}

local cities = {"Hamburg", "Rotterdam", "Antwerp", "Berlin", "Munich", "Paris", "Lyon", "Milan"}

local function pick(list) return list[math.random(#list)] end

function request()
   counter = counter + 1
   local user = users[(counter % #users) + 1]
   local roll = math.random(100)
   local id = (#user.ids > 0) and pick(user.ids) or "1"
   if roll <= 35 then
      return wrk.format("GET", pick(list_paths), user.headers)
   elseif roll <= 70 then
      if roll <= 55 then
         return wrk.format("GET", "/api/shipments/" .. id, user.headers)
      end
      return wrk.format("GET", "/api/shipments/" .. id .. "/events", user.headers)
   elseif roll <= 90 then
      return wrk.format("GET", "/api/dashboard", user.headers)
   elseif roll <= 94 then
      local origin, destination = pick(cities), pick(cities)
      local body = string.format(
         '{"customer":"Load Test","origin":"%s","destination":"%s","weight_kg":%d}',
         origin, destination, math.random(100, 20000))
      return wrk.format("POST", "/api/shipments", user.headers, body)
   elseif roll <= 98 then
      local body = '{"kind":"checkpoint","location":"' .. pick(cities) .. '"}'
      return wrk.format("POST", "/api/shipments/" .. id .. "/events", user.headers, body)
   end
   local body = string.format(
      '{"customer":"Load Test","origin":"Hamburg","destination":"Berlin","weight_kg":%d}',
      math.random(100, 20000))
   return wrk.format("POST", "/api/quotes", user.headers, body)
end

function delay()
   return math.random(math.floor(think_ms * 0.5), math.floor(think_ms * 1.5))
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
   local merged = {}
   for _, thread in ipairs(threads) do
      local counts = thread:get("statuses")
      if counts then
         for status, n in pairs(counts) do merged[status] = (merged[status] or 0) + n end
      end
   end
   local parts = {}
   for status, n in pairs(merged) do parts[#parts + 1] = string.format('"%s":%d', status, n) end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"statuses":{%s}}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(95),
      latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout,
      table.concat(parts, ",")))
end
