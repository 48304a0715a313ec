"""The venue's L2 market told as ITCH 5.0 order events: the engine's L3 book, fed the packets,
holds the same top of book as an L2 book fed the datagrams, after every packet, with nothing
dropped."""
from engine.book import Books, ItchOrders, decode_datagram, decode_itch
from engine.protocol import itch50, md
from lab.venue.market import synthetic_feed


def test_the_l3_book_of_the_itch_feed_has_the_l2_books_top_after_every_packet():
    feed = synthetic_feed(3000, 5, venues=(1, 2), instrument=7)
    datagrams = [md.decode_md(p) for p in feed.payloads]
    packets, seqs, told = itch50.PROTOCOL.from_l2(datagrams)
    assert len(packets) == len(seqs) == len(told) and len(packets) > 2500 and told == sorted(told)
    l2, l3 = Books({(1, 7), (2, 7)}), Books({(1, 7), (2, 7)})
    orders = {1: ItchOrders(1 << 16), 2: ItchOrders(1 << 16)}
    applied = 0
    for packet, seq, index in zip(packets, seqs, told):
        while applied <= index:                                     # datagrams without a packet change nothing
            decode_datagram(feed.payloads[applied], l2, 0, 0)
            applied += 1
        venue = datagrams[index].venue
        decode_itch(packet, l3, orders[venue], venue, 0, 0)
        assert l3[venue, 7].top() == l2[venue, 7].top(), index
        assert itch50.frame_packets(packet, [0], [len(packet)]).seq[0] == seq
    assert orders[1].dropped == {} and orders[2].dropped == {}
    per_venue = {v: [s for s, i in zip(seqs, told) if datagrams[i].venue == v] for v in (1, 2)}
    assert all(s[0] == 1 and s == sorted(s) for s in per_venue.values())      # each venue's messages from 1
