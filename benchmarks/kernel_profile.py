"""The GPU time of each kernel a call launches (torch.profiler over several calls after a warm-up), for a
benchmark's `--profile`: where a setting's time to first token goes. Off CUDA, the CPU time of each operator."""
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile


def kernel_times(fn, device: str, calls: int = 5, top: int = 12) -> dict:
    """{"total_us", "launches": a call's time on the device (off CUDA: in operators) and kernels, all of them,
    "top": the `top` kernels (operators off CUDA) by time, each as {"name", "us" (a call's total), "launches" (a
    call's)}}, over `calls` calls of fn after one warm-up. A call's wall time less total_us is roughly the time the
    device waited for the host (kernels that overlap, as under programmatic dependent launch, blur it)."""
    cuda = str(device).startswith("cuda")
    fn()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
            if cuda:
                torch.cuda.synchronize()
    us, launches = defaultdict(float), defaultdict(int)
    for event in prof.events():
        on_device = event.device_type == torch.autograd.DeviceType.CUDA
        if on_device != cuda:
            continue
        us[event.name] += (event.device_time_total if cuda else event.self_cpu_time_total) / calls
        launches[event.name] += 1
    ranked = sorted(us, key=us.get, reverse=True)[:top]
    return {"total_us": round(sum(us.values()), 1), "launches": sum(launches.values()) // calls,
            "top": [{"name": name, "us": round(us[name], 1), "launches": launches[name] // calls} for name in ranked]}
