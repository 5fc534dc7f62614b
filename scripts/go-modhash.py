#!/usr/bin/env python3
# Prints the go.sum "h1:" hash of a module zip (the hash of its sorted per-file SHA-256 list),
# so that install-deps.sh can check the Go toolchain it downloads against a pinned value.
import sys, zipfile, hashlib, base64
z = zipfile.ZipFile(sys.argv[1])
names = sorted(i.filename for i in z.infolist() if not i.filename.endswith('/'))
summary = ''.join('%s  %s\n' % (hashlib.sha256(z.read(n)).hexdigest(), n) for n in names)
print('h1:' + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode())
