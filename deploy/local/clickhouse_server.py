"""Runs ClickHouse 26.9 (the chdb-core wheel) as a server on 127.0.0.1.

The wheel holds the full engine; started through clickhouse-local's code path in a directory
holding config.xml, it serves the real HTTP and native interfaces for as long as the query below
runs (ten years). Usage: python clickhouse_server.py CONFIG_DIR DATA_DIR
"""
import os
import sys

import chdb._chdb as engine

config_dir, data_dir = sys.argv[1], sys.argv[2]
os.chdir(config_dir)
engine.query(
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    "SELECT sleepEachRow(1) FROM numbers(315360000) FORMAT Null SETTINGS max_block_size = 1",
    "CSV",
    path=data_dir,
)
