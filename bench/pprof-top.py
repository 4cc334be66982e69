#!/usr/bin/env python3
"""Minimal pprof (profile.proto) reader: top inuse_space by leaf-ish frames and by stacks."""
import gzip, sys, collections

def varint(b, i):
    r = s = 0
    while True:
        c = b[i]; i += 1
        r |= (c & 0x7f) << s; s += 7
        if c < 0x80: return r, i

def fields(b):
    i = 0
    while i < len(b):
        k, i = varint(b, i)
        f, t = k >> 3, k & 7
        if t == 0:
            v, i = varint(b, i)
        elif t == 2:
            n, i = varint(b, i); v = b[i:i+n]; i += n
        elif t == 1:
            v = b[i:i+8]; i += 8
        elif t == 5:
            v = b[i:i+4]; i += 4
        else:
            raise ValueError(t)
        yield f, t, v

def packed(v, t):
    if t == 0: return [v]
    out = []; i = 0
    while i < len(v):
        x, i = varint(v, i); out.append(x)
    return out

data = open(sys.argv[1], 'rb').read()
try: data = gzip.decompress(data)
except OSError: pass
strings = []; samples = []; locs = {}; funcs = {}; stypes = []
for f, t, v in fields(data):
    if f == 6: strings.append(v.decode('utf-8', 'replace'))
    elif f == 1:
        st = {ff: vv for ff, tt, vv in fields(v)}; stypes.append(st)
    elif f == 2:
        loc = []; val = []
        for ff, tt, vv in fields(v):
            if ff == 1: loc += packed(vv, tt)
            elif ff == 2: val += packed(vv, tt)
        samples.append((loc, val))
    elif f == 4:
        lid = None; lines = []
        for ff, tt, vv in fields(v):
            if ff == 1: lid = vv
            elif ff == 4:
                fid = [x for a, b_, x in fields(vv) if a == 1]
                if fid: lines.append(fid[0])
        locs[lid] = lines
    elif f == 5:
        fid = None; name = None
        for ff, tt, vv in fields(v):
            if ff == 1: fid = vv
            elif ff == 2: name = vv
        funcs[fid] = name
names = [strings[st.get(1, 0)] for st in stypes]
vi = len(names) - 1
print('sample types', names, 'using', names[vi])
def fname(lid):
    out = []
    for fid in locs.get(lid, []):
        out.append(strings[funcs.get(fid, 0)])
    return out
skip = ('jemalloc', 'alloc::', 'core::', '_rjem', 'prof_', 'je_', 'std::', '__rust', 'hashbrown', 'imalloc', 'malloc', '<alloc', 'pprof', 'tikv', 'RawVec', 'do_reserve', 'finish_grow', '<core', 'bytes::', '<bytes')
total = sum(v[vi] for _, v in samples)
print('total', total)
by = collections.Counter(); bystack = collections.Counter()
depth = int(sys.argv[2]) if len(sys.argv) > 2 else 4
for loc, val in samples:
    frames = [n for lid in loc for n in fname(lid)]
    interesting = [n for n in frames if not n.startswith(skip) and 'alloc' not in n.split('::')[0]]
    key = interesting[0] if interesting else (frames[0] if frames else '?')
    by[key] += val[vi]
    bystack[' <- '.join(interesting[:depth])] += val[vi]
for k, v in by.most_common(25):
    print(f'{v/total*100:5.1f}% {v:>10} {k[:150]}')
print('---- stacks')
for k, v in bystack.most_common(30):
    print(f'{v/total*100:5.1f}% {v:>10} {k[:400]}')
