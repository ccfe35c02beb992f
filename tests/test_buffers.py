"""The buffer pool reuses a buffer only once no view of it is alive."""

from afb.buffers import BufferPool


def test_a_buffer_is_reused_only_after_its_views_are_gone():
    pool = BufferPool(size=1024, count=2)
    first = pool.view(100)
    first[:3] = b"abc"
    second = pool.view(100)
    assert first.obj is not second.obj             # first is still referenced
    keep = first[:3]                               # a slice keeps it alive too
    del first
    third = pool.view(10)
    assert third.obj is not keep.obj
    del keep, third
    fourth = pool.view(50)
    assert len(fourth) == 50 and fourth.obj is not second.obj


def test_oversized_requests_get_a_buffer_of_their_own():
    pool = BufferPool(size=1024, count=2)
    big = pool.view(4096)
    assert len(big) == 4096 and len(big.obj) == 4096
    assert pool._pool == []
