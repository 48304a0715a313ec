"""From captures to tick-to-trade.

decode      packets -> columns (link layer, IPv4, TCP/UDP), vectorised
reassembly  TCP streams per flow, each byte at its first arrival
match       orders -> the MD message that triggered them
convention  hardware / software stamps, Ethernet wire time
stats       percentiles, .hgrm, CSV/Parquet, plot
measure     the pipeline behind `lab measure`
"""
