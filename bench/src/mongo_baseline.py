# Baseline for `ferry-bench mongo-dump`: the fastest simple export a user could
# script. Streams every collection of a database with pymongo's raw batches (no
# decoding) into `zstd -1`, one collection after another.
import subprocess
import sys

import pymongo

url, db_name, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
client = pymongo.MongoClient(url)
db = client[db_name]
for name in db.list_collection_names():
    with open(f"{out_dir}/{name}.bson.zst", "wb") as out:
        zstd = subprocess.Popen(["zstd", "-1", "-q", "-c"], stdin=subprocess.PIPE, stdout=out)
        for batch in db[name].find_raw_batches():
            zstd.stdin.write(batch)
        zstd.stdin.close()
        if zstd.wait() != 0:
            sys.exit("zstd failed")
