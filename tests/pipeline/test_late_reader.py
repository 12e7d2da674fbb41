"""A sender that connects to a reader still starting up (loading a model) loses nothing."""

from __future__ import annotations

import time

from pipeline.stage import RunOptions, StageThread
from pipeline.transport import Endpoint, SocketOptions
from stages.sinks import StatsPrinter
from tests.helpers.stages import CountingSource


class SlowStartSink(StatsPrinter):
    """A sink whose setup takes a while, as a worker loading its model does."""

    def setup(self) -> None:
        time.sleep(1.5)
        super().setup()


def test_a_source_connecting_to_a_late_binding_reader_delivers_everything(process_transport, make_url):
    url = make_url(process_transport)
    options = SocketOptions(hwm=100, recv_timeout_ms=100, linger_ms=200)
    sink = SlowStartSink()
    # The source connects and finishes (20 frames fit in its queue) before the sink has even bound.
    source = StageThread(CountingSource(count=20), RunOptions(name="source", outputs=[Endpoint(url, bind=False)],
                                                              socket=options, metrics_interval_s=0, end_wait_s=10))
    reader = StageThread(sink, RunOptions(name="sink", inputs=[Endpoint(url, bind=True)], socket=options,
                                          metrics_interval_s=0))
    source.start()
    reader.start()
    for thread in (source, reader):
        thread.join(20)
        assert not thread.is_alive() and thread.error is None
    assert (sink.totals["produced"], sink.totals["received"], sink.totals["lost"]) == (20, 20, 0)
