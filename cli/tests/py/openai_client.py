"""Drive `gptoss serve` with the real OpenAI Python client (and raw HTTP for what the client
cannot send). Usage: openai_client.py BASE_URL API_KEY. Prints OK lines; exits non-zero on the
first failure with the reason."""
import concurrent.futures
import json
import sys
import urllib.error
import urllib.request

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    print("OK:", what)


def raw(path, body, key=key, method="POST"):
    req = urllib.request.Request(base + path, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]

# Non-streaming chat.
r = client.chat.completions.create(model="m", messages=msgs, max_tokens=12, temperature=0)
check(r.object == "chat.completion" and len(r.choices) == 1, "non-streaming chat returns one choice")
check(r.choices[0].message.role == "assistant", "assistant role")
check(r.choices[0].finish_reason in ("stop", "length", "tool_calls"), f"finish_reason {r.choices[0].finish_reason}")
check(r.usage.completion_tokens >= 1 and r.usage.completion_tokens <= 12, f"usage {r.usage}")
check(r.usage.prompt_tokens > 10, "prompt rendered through the chat template")
first = r.choices[0].message.content

# Greedy is deterministic: the same request gives the same reply.
r2 = client.chat.completions.create(model="m", messages=msgs, max_tokens=12, temperature=0)
check(r2.choices[0].message.content == first, "greedy replies repeat")

# Streaming chat: role first, deltas, a finish reason, [DONE] (the client stops on it).
stream = client.chat.completions.create(
    model="m", messages=msgs, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True})
chunks = list(stream)
check(len(chunks) >= 2, f"{len(chunks)} stream chunks")
check(chunks[0].choices[0].delta.role == "assistant", "first chunk carries the role")
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check(len(finishes) == 1, f"one finish_reason in the stream: {finishes}")
text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
check(text == (first or ""), "streamed content equals the non-streamed content")
usage = [c.usage for c in chunks if c.usage]
check(len(usage) == 1 and usage[0].completion_tokens == r.usage.completion_tokens, "usage chunk")

# Models and health.
models = client.models.list()
check(len(models.data) == 1, "one model listed")
st, body = raw("/health", None, key=None, method="GET")
check(st == 200 and json.loads(body)["status"] == "ok", "health")

# Completions, both ways.
c = client.completions.create(model="m", prompt="Hello", max_tokens=5, temperature=0)
check(c.choices[0].finish_reason in ("stop", "length") and c.usage.completion_tokens <= 5, "completions")
cs = list(client.completions.create(model="m", prompt="Hello", max_tokens=5, temperature=0, stream=True))
check("".join(x.choices[0].text for x in cs) == c.choices[0].text, "streamed completion equals the whole one")

# Errors: wrong key, malformed JSON, oversize body, bad fields, too many tokens.
bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong-" + key, max_retries=0)
try:
    bad.chat.completions.create(model="m", messages=msgs, max_tokens=2)
    check(False, "wrong API key refused")
except openai.AuthenticationError:
    check(True, "wrong API key refused with 401")
st, body = raw("/v1/chat/completions", b"{not json", )
check(st == 400 and "error" in json.loads(body), f"malformed JSON is 400 ({st})")
st, body = raw("/v1/chat/completions", json.dumps({"messages": []}).encode())
check(st == 400, f"empty messages is 400 ({st})")
st, body = raw("/v1/chat/completions", json.dumps({"messages": msgs, "max_tokens": 10**9}).encode())
check(st == 400 and b"limit" in body, f"max_tokens above the limit is 400 ({st})")
st, body = raw("/v1/chat/completions", json.dumps({"messages": msgs, "temperature": "hot"}).encode())
check(st == 400, f"bad temperature is 400 ({st})")
st, _ = raw("/v1/chat/completions", b"{\"messages\": \"" + b"x" * (3 << 20) + b"\"}")
check(st == 413, f"oversize body is 413 ({st})")
st, _ = raw("/v1/nothing", b"{}")
check(st == 404, f"unknown endpoint is 404 ({st})")

# 16 concurrent clients, streaming and not, all answered.
def one(i):
    cl = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)
    if i % 2:
        out = cl.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0)
        return out.choices[0].message.content
    parts = cl.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0, stream=True)
    return "".join((p.choices[0].delta.content or "") for p in parts if p.choices)

with concurrent.futures.ThreadPoolExecutor(16) as ex:
    results = list(ex.map(one, range(16)))
check(len(results) == 16, "16 concurrent clients answered")
first8 = client.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0).choices[0].message.content
check(all(x == first8 for x in results), "concurrent greedy replies equal the sequential one")

# A client that disconnects mid-stream frees the worker: the next request is answered.
s = client.chat.completions.create(model="m", messages=msgs, max_tokens=2000, temperature=0, stream=True)
for i, _ in enumerate(s):
    if i >= 2:
        break
s.close()
r3 = client.chat.completions.create(model="m", messages=msgs, max_tokens=4, temperature=0)
check(r3.choices[0].message is not None, "served after a client disconnected mid-stream")
st, _ = raw("/health", None, key=None, method="GET")
check(st == 200, "still healthy")
print("ALL OK")
