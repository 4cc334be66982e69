#!/usr/bin/env python3
"""Runs a ztunnel binary on every fixture in this directory and records its verdict.

Usage (as root): record_ztunnel.py <ztunnel binary>

Each fixture is loaded as ztunnel's LOCAL_XDS_PATH in a fresh network namespace. A fixture is
"accepted" when ztunnel answers 200 on /healthz/ready, "rejected" when it exits first; the
error it printed last is kept. For accepted fixtures the workloads, services and policies from
/config_dump are kept too, so the meaning of what it loaded can be compared. Writes verdicts.json beside the fixtures,
with the binary's `version` under "_recordedWith".
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def in_ns(ns, *args):
    return ["ip", "netns", "exec", ns, *args]


def fetch(ns, url):
    out = subprocess.run(in_ns(ns, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", url),
                         capture_output=True, text=True, timeout=5)
    body, _, code = out.stdout.rpartition("\n")
    return code, body


def judge(binary, path):
    ns = f"ztverdict-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FAKE_CA": "true",
            "XDS_ADDRESS": "",
            "CA_ADDRESS": "",
            "LOCAL_XDS_PATH": path,
            "PROXY_MODE": "dedicated",
            "PROXY_WORKLOAD_INFO": "default/local/default",
            "RUST_LOG": "info",
        }
        proc = subprocess.Popen(in_ns(ns, binary), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        verdict = None
        deadline = time.time() + 20
        while time.time() < deadline:
            if proc.poll() is not None:
                verdict = "rejected"
                break
            try:
                code, _ = fetch(ns, "http://127.0.0.1:15021/healthz/ready")
            except subprocess.TimeoutExpired:
                code = ""
            if code == "200":
                verdict = "accepted"
                break
            time.sleep(0.2)
        dump = None
        if verdict == "accepted":
            _, body = fetch(ns, "http://127.0.0.1:15000/config_dump")
            dump = json.loads(body)
        if proc.poll() is None:
            proc.terminate()
        out, _ = proc.communicate(timeout=10)
        out = ANSI.sub("", out)
        errors = [l for l in out.splitlines() if "error" in l.lower()]
        result = {"ztunnel": verdict or "timeout"}
        if verdict != "accepted":
            result["error"] = errors[-1].strip() if errors else out.strip()[-400:]
        else:
            result["policies"] = sorted(dump.get("policies", []), key=lambda p: p.get("name", ""))
            result["workloads"] = sorted(dump.get("workloads", []), key=lambda w: w.get("uid", ""))
            result["services"] = sorted(dump.get("services", []), key=lambda s: s.get("hostname", ""))
        return result
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def main():
    binary = sys.argv[1]
    version = subprocess.run([binary, "version"], capture_output=True, text=True).stdout.strip()
    verdicts = {"_recordedWith": version}
    for name in sorted(os.listdir(HERE)):
        if name.endswith(".yaml"):
            verdicts[name] = judge(binary, os.path.join(HERE, name))
            print(name, verdicts[name]["ztunnel"], verdicts[name].get("error", ""), flush=True)
    with open(os.path.join(HERE, "verdicts.json"), "w") as f:
        json.dump(verdicts, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
