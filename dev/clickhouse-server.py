"""Runs a ClickHouse 26.9 server from the chdb-core wheel, for the local stack.

chdb embeds the full ClickHouse engine; `SYSTEM START LISTEN` opens its HTTP and native ports,
configured by the config.xml in the working directory. The server lives while one blocking query
runs: it reads a FIFO, so writing a line to that FIFO stops the server cleanly.

usage: clickhouse-server.py DATA_DIR STOP_FIFO  (run from the folder holding config.xml)
"""
import os
import sys

import chdb


def main() -> int:
    data_dir, fifo = (os.path.abspath(p) for p in sys.argv[1:3])
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    if "'" in fifo:
        print(f"refusing a FIFO path with a quote: {fifo}", file=sys.stderr)
        return 2
    print(f"clickhouse (chdb {chdb.__version__}) serving data in {data_dir}", flush=True)
    chdb._chdb.query(
        "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
        f"SELECT * FROM file('{fifo}', 'LineAsString')",
        "TSV",
        path=data_dir,
    )
    print("clickhouse stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
