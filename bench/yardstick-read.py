#!/usr/bin/env python3
# The yardstick of bench/scale.ts: a plain script that walks a config tree, reads every file and
# parses its JSON, nothing else. Prints the number of values parsed.
import json
import os
import sys

n = 0
for d, _dirs, files in os.walk(sys.argv[1]):
    for f in files:
        with open(os.path.join(d, f), "rb") as fh:
            json.loads(fh.read())
        n += 1
print(n)
