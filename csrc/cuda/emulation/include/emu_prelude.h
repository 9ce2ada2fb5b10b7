// Forced first include (-include) of the emulation build: turn CUDA qualifiers into host C++.
#pragma once
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)
#define __syncthreads() emu_syncthreads()
#define threadIdx emu_threadIdx
#define blockIdx emu_blockIdx
#define __noinline__
