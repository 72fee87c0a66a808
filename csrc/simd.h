// x86-64 Linux with GCC: hot loops are also compiled for AVX2 and picked at load time (ifunc), so one portable
// binary runs 8-wide where the CPU allows.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define FRESCO_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FRESCO_SIMD_CLONES
#endif
