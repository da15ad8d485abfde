"""Checks that tcasm.attach says it waits, as the tcasm commands do. Run by tests/python.rs:

    python check_attach_wait.py NAME

Prints "attaching" and attaches to NAME, which the test starts a few seconds later: once a
second has passed, attach says on sys.stderr, once, that it waits (not before). Then attaches
again to NAME, there by now (nothing said), and to a name no producer takes with a timeout
under a second (nothing said, then TcasmError). Prints "ok" at the end.
"""
import io
import sys
import threading
import time

import tcasm

name = sys.argv[1]
said = io.StringIO()
real_stderr = sys.stderr
sys.stderr = said

# What attach has said half a second in: nothing yet.
early = []
sampler = threading.Timer(0.5, lambda: early.append(said.getvalue()))
sampler.start()
print("attaching", flush=True)
started = time.monotonic()
observer = tcasm.attach(name, timeout=30)
waited = time.monotonic() - started
sampler.join()
sys.stderr = real_stderr

text = said.getvalue()
line = f'tcasm: waiting up to 30 s for producer "{name}" to appear'
assert waited > 1.5, f"attached after {waited:.1f} s: the test starts the producer later"
assert early == [""], f"said before a second had passed: {early!r}"
assert text.count(line) == 1, f"{text!r} does not say {line!r} once"
assert text.count("\n") == 1, f"said more than one line: {text!r}"
assert observer.latest().version >= 1

# Nothing to say when the producer is there, nor for a wait under a second.
sys.stderr = said = io.StringIO()
tcasm.attach(name, timeout=30)
try:
    tcasm.attach(f"{name}-nobody", timeout=0.5)
except tcasm.TcasmError:
    pass
else:
    raise AssertionError("attached to a name no producer takes")
sys.stderr = real_stderr
assert said.getvalue() == "", f"said {said.getvalue()!r} without waiting a second"
print("ok", flush=True)
