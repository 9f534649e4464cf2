"""Read bandwidth per thread count and buffer size (torch.sum over float32), to tell
whether BERT's weight stream (about 4 GB/s per thread at 2 threads) is near what a core can pull."""
import time, sys, torch
res = []
for mb in (16, 170, 1024):
    x = torch.ones(mb * (1 << 20) // 4, dtype=torch.float32)
    for th in (1, 2, 16):
        torch.set_num_threads(th)
        x.sum()
        best, times = 1e9, []
        for _ in range(7):
            t = time.perf_counter(); x.sum(); d = time.perf_counter() - t
            times.append(d)
        times.sort()
        print(f"{mb:5d} MiB  {th:2d} threads  best {mb/1024/times[0]:6.1f} GiB/s  median {mb/1024/times[3]:6.1f} GiB/s", flush=True)
