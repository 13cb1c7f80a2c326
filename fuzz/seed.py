#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from ../shared/vectors/flowee-vectors.json (C++ captures).

Run from the repository root: python3 fuzz/seed.py. The checked-in corpus is these seeds
grown by a campaign, then minimized by libFuzzer's set-cover merge (see fuzz/README.md).
"""
import hashlib, json, os, struct

cases = json.load(open("../shared/vectors/flowee-vectors.json"))["cases"]
cmf = [bytes.fromhex(c["hex"]) for c in cases if c["group"].startswith(("cmf_", "varint"))]
frames = {c["name"]: bytes.fromhex(c["hex"]) for c in cases if c["group"].startswith("frame")}
small = [f for f in frames.values() if len(f) < 100]


def u16(n):
    return struct.pack("<H", n)


def put(target, data):
    d = os.path.join("fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb").write(data)


for doc in cmf + [b"".join(cmf)]:
    put("cmf", doc)
for f in list(frames.values()) + [b"".join(small)]:
    put("frames", b"\x07" + f)
    put("json", f)
for doc in cmf:
    put("json", doc)
for text in [b'[{"tag":1,"type":"string","value":"hi"}]',
             b'{"service_id":3,"message_id":2,"headers":{"11":42},"body_hex":"0a026869"}',
             b'{"system":"ping"}']:
    put("json", text)

# sequences: chunk size, body length, service, message, then frames to feed the reassembler.
for chunk, length, tail in [(8000, 20000, frames["msg_body_20000_sequence"]),
                            (100, 1000, frames["msg_body_8001_sequence"]),
                            (1, 5, b"".join(small))]:
    put("sequences", u16(chunk - 1) + u16(length) + b"\x03\x02" + tail)

# connection: role, then the config bytes `small_config` reads, then commands.
config = bytes([9, 9]) + u16(5000) + u16(60000) + bytes([10, 8, 2]) + u16(0) + u16(4000) + u16(7999) + b"\x00\x00"
for role in range(4):
    for stream in [b"".join(small), frames["msg_body_8001_sequence"]]:
        script = bytes([role]) + config
        for i in range(0, len(stream), 2000):
            script += b"\x01" + u16(len(stream[i:i + 2000])) + stream[i:i + 2000]  # input
            script += b"\x08\x07"  # drain events, drain transmit
        script += b"\x05\x03\x02" + u16(3000) + b"\x00" * 60 + b"\x01"  # a send
        script += b"\x04" + u16(60000) + b"\x07"  # time passes
        script += b"\x07\x08\x0a\x08\x0d"  # eof, then a new connection with what is left
        put("connection", script)

# node: limits, then (pick, command) pairs: accepts, input, time, bans.
script = bytes([3, 2, 2, 1, 4, 3, 0])
for i in range(5):
    script += bytes([0, 0, i]) + u16(4000 + i)
script += bytes([0, 1, 1])  # connect
for f in small:
    script += bytes([1, 2]) + u16(len(f)) + f
script += bytes([2, 2]) + u16(4) + b"\xff\xff\xff\xff"  # garbage
script += bytes([0, 6]) + u16(5000) + bytes([0, 10, 2]) + bytes([0, 11]) + u16(20000) + b"\x07"
put("node", script)
