"""Drive `gptoss chat` through a pseudo-terminal. Usage: chat_pty.py GPTOSS MODEL.
Checks the banner, a reply, /reasoning, /reset, Ctrl-C stopping a long reply (the session goes
on), and Ctrl-C at the prompt exiting."""
import os
import pty
import re
import select
import sys
import time

exe, model = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(exe, [exe, "chat", "-m", model, "--backend", "cpu", "--temp", "0", "-n", "20000", "-c", "32768"])

buf = b""


def read_until(pattern, timeout=60):
    global buf
    end = time.time() + timeout
    while time.time() < end:
        m = re.search(pattern, buf)
        if m:
            out = buf[: m.end()]
            buf = buf[m.end():]
            return out
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            buf += data
    print("FAIL: waiting for", pattern, "got", buf[-500:])
    sys.exit(1)


def send(s):
    os.write(fd, s.encode())


def ok(what):
    print("OK:", what)


read_until(rb"gptoss chat: .* on cpu")
read_until(rb"> ")
ok("banner and prompt")
send("/reasoning high\n")
read_until(rb"\(reasoning effort: high\)")
read_until(rb"> ")
ok("/reasoning")
send("/help\n")
read_until(rb"/reset")
read_until(rb"> ")
# A long reply (no token limit that could end it soon): stop it with Ctrl-C while it runs. The
# tiny model's greedy reply is ~1000 tokens with nothing printed until its end, and it took as
# little as 1.5 s on a fast run (the wait here was 1.5 s then, and that run failed for want of
# anything to interrupt). So the Ctrl-C goes 0.3 s after the line is echoed: before it marks the
# reply as running (a Ctrl-C earlier would end the chat), the chat only renders and tokenizes the
# prompt and opens a session, milliseconds; the reply itself needs 1.4 s or more.
send("Hello there\n")
read_until(rb"Hello there\r?\n")
time.sleep(0.3)
send("\x03")
out = read_until(rb"\[interrupted\]|\[\d+ tokens", timeout=120)
if b"[interrupted]" not in out:
    print("FAIL: the reply ended by itself before Ctrl-C:", out[-300:])
    sys.exit(1)
read_until(rb"> ")
ok("Ctrl-C stops a reply and the chat goes on")
send("/reset\n")
read_until(rb"\(history cleared\)")
read_until(rb"> ")
ok("/reset")
send("\x03")
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
if code != 130:
    print("FAIL: Ctrl-C at the prompt exit code", code)
    sys.exit(1)
ok("Ctrl-C at the prompt exits (130)")
print("ALL OK")
