#!/usr/bin/env python3
"""Adds the index tansu 0.6's SQLite schema lacks: record headers by (topition, offset_id).

Without it every fetch scans all headers ever written and slows down as topic data grows (seconds
per fetch after ~50k records). The broker creates its tables at start-up, so this waits up to 10 s
for them. Idempotent. Usage: index-tansu-headers.py PATH/TO/tansu.db
"""
import os
import sqlite3
import sys
import time

path = sys.argv[1]
for attempt in range(100):
    if os.path.exists(path):
        try:
            db = sqlite3.connect(path, timeout=10)
            db.execute("CREATE INDEX IF NOT EXISTS header_record_idx ON header (topition, offset_id)")
            db.commit()
            break
        except sqlite3.OperationalError:
            pass
    time.sleep(0.1)
else:
    sys.exit(f"{path} has no header table after 10 s")
