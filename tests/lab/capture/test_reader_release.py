"""Capture.batches(release=False) with Capture.release_before() done by the reader of the batches."""
import numpy as np

from lab.capture import PcapWriter, open_capture


def test_release_by_the_consumer_keeps_the_packets(tmp_path):
    path = tmp_path / "x.pcap"
    frames = [bytes([i]) * (60 + i) for i in range(30)]
    with PcapWriter(path) as writer:
        for i, frame in enumerate(frames):
            writer.write(1_000 + i, frame)
    with open_capture(path) as capture:
        read = []
        for batch in capture.batches(7, release=False):
            read += [batch.data[o:o + n].tobytes() for o, n in zip(batch.offset, batch.caplen)]
            capture.release_before(int(batch.offset[-1]))
        assert read == frames
        assert np.array_equal(capture.read_all().ts_ns, 1_000 + np.arange(30))   # released pages fault back in
    capture.release_before(10**6)                                               # closed: nothing to release
