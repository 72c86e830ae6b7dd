-- Writes the seed corpus of the fuzzer (spec/fuzz/corpus/) from the raw
-- requests of the specs (http_spec, framing_spec, robustness_spec,
-- limits_spec, regressions_spec), each in the harness's input layout (see
-- harness.c): a flags byte, a cut count, 16-bit cut points, the payload.
--   lua5.4 spec/fuzz/seeds.lua [DIR]      (default spec/fuzz/corpus)
-- The files are committed; run this again only to change the seeds.
local dir = arg[1] or "spec/fuzz/corpus"

-- flags (harness.c): end mode in bits 0-1, second client 0x04, dev 0x08,
-- limits profile << 4, one turn 0x40, stay open 0x83.
local HALF, RESET, SETTLE, STAY = 0x00, 0x01, 0x02, 0x83
local TWO, DEV, TIGHT, INFLIGHT1, CONNS1, ONETURN = 0x04, 0x08, 0x10, 0x20, 0x30, 0x40
-- byte 1, above the cut count: slow reader 0x10, payload repeated 8/64/512 times.
local SLOW, X8, X64, X512 = 0x10, 0x20, 0x40, 0x60

local function input(flags, cuts, payload, flags2)
  assert(#cuts <= 15)
  local parts = { string.char(flags, (flags2 or 0) | #cuts) }
  for _, c in ipairs(cuts) do parts[#parts + 1] = string.pack("<I2", c) end
  parts[#parts + 1] = payload
  return table.concat(parts)
end

-- Cut points every `step` bytes (at most 15).
local function every(payload, step)
  local cuts = {}
  for i = step, #payload - 1, step do
    if #cuts == 15 then break end
    cuts[#cuts + 1] = i
  end
  return cuts
end

-- Cut points right after each occurrence of `s` (at most 15).
local function after(payload, s)
  local cuts, from = {}, 1
  while #cuts < 15 do
    local i, j = payload:find(s, from, true)
    if not i then break end
    if j < #payload then cuts[#cuts + 1] = j end
    from = j + 1
  end
  return cuts
end

local function chunked(pieces)
  local out = {}
  for _, p in ipairs(pieces) do out[#out + 1] = string.format("%x\r\n%s\r\n", #p, p) end
  out[#out + 1] = "0\r\n\r\n"
  return table.concat(out)
end

local function get(path, extra, version)
  return string.format("GET %s %s\r\nHost: x\r\n%sConnection: close\r\n\r\n", path,
    version or "HTTP/1.1", extra or "")
end

local seeds = {}
local function seed(name, flags, cuts, payload, flags2)
  seeds[#seeds + 1] = { name = name, data = input(flags, cuts, payload, flags2) }
end

-- valid requests, each route
local simple = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
seed("get", HALF, {}, simple)
seed("get-bytewise", HALF, every(simple, 1), simple)
seed("get-split-crlf", ONETURN, after(simple, "\r"), simple)
seed("get-reset", RESET, {}, simple)
seed("get-two-clients", HALF | TWO, every(simple, 7), simple)
seed("get-inflight1", HALF | TWO | INFLIGHT1, {}, "GET /async HTTP/1.1\r\nHost: x\r\n\r\n")
seed("get-conns1", HALF | TWO | CONNS1, {}, simple)
seed("get-keepalive-idle", STAY, {}, simple)
seed("get-partial-head", STAY, {}, "GET / HTTP/1.1\r\nHost: x\r\nX-Partial: yes\r\n")
seed("get-http10", HALF, {}, "GET /echo HTTP/1.0\r\n\r\n")
seed("get-http10-keepalive", HALF, after("GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "\r\n\r\n"),
  "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
seed("routes-params", HALF, {}, get("/users/42") )
seed("routes-params-pct", HALF, {}, get("/users/%41b%2f?q=%zz"))
seed("routes-rest", HALF, {}, get("/files/a/b/c.txt?x=1"))
seed("routes-delete", HALF, {}, "DELETE /users/7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
seed("routes-404", HALF, {}, get("/nope/nothing"))
seed("boom", HALF, {}, "GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
seed("boom-dev", HALF | DEV, {}, get("/boom"))
seed("iter", HALF, {}, get("/iter"))
seed("iter-http10", HALF, {}, "GET /iter HTTP/1.0\r\n\r\n")
seed("iter-fail", SETTLE, {}, "GET /iter?fail HTTP/1.1\r\nHost: x\r\n\r\n")
seed("sse", HALF, {}, get("/sse", "Last-Event-ID: 4\r\n"))
seed("hang-504", STAY, {}, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
seed("hang-cancel", RESET, {}, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
seed("async", HALF, {}, "POST /async HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
seed("async-raise", HALF, {}, get("/async?raise"))
seed("head", HALF, {}, "HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\nHEAD /iter HTTP/1.1\r\nHost: x\r\n\r\n"
  .. "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
seed("options-star", HALF, {}, "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
seed("connect", HALF, {}, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nGET / HTTP/1.1\r\n\r\n")
seed("upgrade", HALF, {}, "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nrest")
seed("absolute-form", HALF, {}, get("http://example.com:8080/echo?x=1"))
seed("headers-repeat", HALF, {}, get("/echo", "X-Tag: a\r\nX-Tag: b\r\nCookie: s=1\r\nCookie: t=2\r\nX-A: \t a  b\tc \t\r\n"))

-- bodies
local post = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
seed("post-cl", HALF, after(post, "\r\n\r\n"), post)
seed("post-cl-bytewise-body", HALF, every(post, 4), post)
local ch = "POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
  .. chunked { "hel", "lo", " wor", "ld" }
seed("post-chunked-stream", HALF, after(ch, "\r\n"), ch)
seed("post-chunked-ext-trailer", HALF, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
  .. "5;name=value\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
local cont = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
seed("expect-continue", HALF, after(cont, "\r\n\r\n"), cont)
seed("expect-continue-stream", ONETURN, after(cont, "\r\n\r\n"), (cont:gsub("/echo", "/stream")))
seed("expect-continue-unread", HALF, {}, "POST /echo?head HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
  .. "Expect: 100-continue\r\n\r\nhelloGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
seed("body-incomplete", HALF, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
seed("body-incomplete-stream-reset", SETTLE, {}, "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
seed("body-incomplete-stay", STAY, {}, "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
seed("body-then-pipelined", HALF, {}, "POST /users/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
  .. "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
seed("body-over-tight", HALF | TIGHT, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n0123456789abcdefg")
seed("chunked-over-tight", HALF | TIGHT, {}, "POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
  .. chunked { "0123456789", "0123456789" })

-- pipelining (http_spec)
local pipe = "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
  .. "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
  .. "GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
seed("pipelined", HALF, {}, pipe)
seed("pipelined-split", ONETURN, every(pipe, 9), pipe)
seed("pipelined-reset", RESET, {}, "GET /async HTTP/1.1\r\nHost: x\r\n\r\nGET /iter HTTP/1.1\r\nHost: x\r\n\r\n")
local smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
seed("smuggle-cl", HALF, {}, "POST /echo?head HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #smuggled .. "\r\n\r\n"
  .. smuggled .. "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
  .. chunked { smuggled } .. "GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
seed("regression-bad-after-keepalive", HALF, {}, "GET / HTTP/1.1\r\nHost: x\r\n\r\nBAD REQUEST\r\n\r\n")
seed("regression-partial-after-keepalive", HALF, {}, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\n")

-- big responses to a client that does not read; floods of pipelined input
seed("big-slow-reader", HALF, {}, get("/big"), SLOW)
seed("big-try-slow-reader", SETTLE, {}, get("/big?try"), SLOW)
seed("big-slow-reader-stay", STAY, {}, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n", SLOW)
seed("big-head-slow-reader", HALF, {}, "HEAD /big HTTP/1.1\r\nHost: x\r\n\r\n", SLOW | X8)
seed("blob-slow-reader", HALF, {}, get("/blob?64"), SLOW)
seed("blob-slow-reader-reset", SETTLE, {}, "GET /blob HTTP/1.1\r\nHost: x\r\n\r\nGET /blob?9 HTTP/1.1\r\nHost: x\r\n\r\n", SLOW)
seed("blob-pipelined", HALF, {}, "GET /blob?2 HTTP/1.1\r\nHost: x\r\n\r\n", X8)
seed("chan", HALF, after(ch, "\r\n\r\n"), (ch:gsub("/stream", "/chan")))
seed("chan-cancel", HALF, {}, "GET /chan?cancel HTTP/1.1\r\nHost: x\r\n\r\n", X8)
local flood = "POST /echo?head HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" .. string.rep("b", 100)
seed("flood-pipelined", HALF, {}, flood, X512)
seed("flood-pipelined-slow-reader", HALF, {}, flood, SLOW | X512)
seed("flood-gets-x64", HALF | ONETURN, every(simple, 5), simple, X64)
seed("flood-async-held", HALF, {}, "POST /async HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n"
  .. string.rep("c", 200), X512)
seed("flood-async-held-slow-reader", SETTLE, {}, "GET /async HTTP/1.1\r\nHost: x\r\nX-Pad: "
  .. string.rep("p", 200) .. "\r\n\r\n", SLOW | X512)
seed("flood-two-clients", RESET | TWO, {}, "GET /iter HTTP/1.1\r\nHost: x\r\n\r\n", X64)

-- bad framing and bad heads (limits_spec, framing_spec)
seed("bad-method", HALF, {}, "BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
seed("bad-version-junk", HALF, {}, "GET / HTTP/1.1 junk\r\nHost: x\r\n\r\n")
seed("bad-header-colon", HALF, {}, "GET / HTTP/1.1\r\nHost x\r\n\r\n")
seed("bad-http2", HALF, {}, "GET / HTTP/2.0\r\nHost: x\r\n\r\n")
seed("bad-no-host", HALF, {}, "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
seed("bad-two-hosts", HALF, {}, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
seed("bad-space-colon", HALF, {}, "GET / HTTP/1.1\r\nHost : x\r\n\r\n")
seed("bad-nul", HALF, {}, "GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\0b\r\n\r\n")
seed("bad-tls", HALF, {}, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
seed("bad-cl-te", HALF, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
  .. "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
seed("bad-two-cl", HALF, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
seed("bad-cl-list", HALF, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!")
seed("bad-te-gzip", HALF, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc")
seed("bad-te-gzip-chunked", HALF, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
  .. "5\r\nhello\r\n0\r\n\r\n")
seed("bad-chunk-size", HALF, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
seed("bad-chunk-huge", HALF, {}, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0000100000;a=b\r\n")
seed("bad-obs-fold", HALF, {}, get("/echo", "X-A: a\r\n continued\r\n"))
seed("bad-leading-ws", HALF, {}, "GET /hello HTTP/1.1\r\n X-A: a\r\nHost: x\r\nConnection: close\r\n\r\n")
seed("bad-te-http10", HALF, {}, "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" .. chunked { "hello" })
seed("bad-host-syntax", HALF, {}, get("/", "", nil):gsub("Host: x", "Host: [::1]x"))
seed("bad-no-version", HALF, {}, "GET /\r\n\r\n")
seed("bad-lowercase-method", HALF, {}, "get / HTTP/1.1\r\nHost: x\r\n\r\n")
seed("tight-head-431", HALF | TIGHT, {}, get("/", "X-Big: " .. string.rep("a", 300) .. "\r\n"))
seed("tight-uri-414", HALF | TIGHT, {}, get("/" .. string.rep("u", 300)))

os.execute("mkdir -p '" .. dir .. "'")
for _, s in ipairs(seeds) do
  assert(#s.data < 2048, s.name)
  local f = assert(io.open(dir .. "/" .. s.name, "wb"))
  f:write(s.data)
  f:close()
end
print(("%d seeds in %s"):format(#seeds, dir))
