"""From captures to tick-to-trade.

decode      packets -> columns (link layer, IPv4, TCP/UDP), vectorised
reassembly  TCP streams per flow, each byte at its first arrival
match       orders -> the MD message that triggered them
convention  hardware / software stamps, Ethernet wire time
hgrm        the percentile distribution as HdrHistogram's .hgrm
exports     owner-only output files, the per-trigger table as CSV/Parquet
plots       the latency histogram and CDF as PNG
measure     the pipeline behind `lab measure`
"""
