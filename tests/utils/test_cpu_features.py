from medseg_auto.utils.cpu_features import native_bf16_in_cpuinfo


def test_bf16_flag_is_read_from_the_flags_line():
    assert native_bf16_in_cpuinfo("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert native_bf16_in_cpuinfo("flags : fpu amx_bf16\n")
    assert not native_bf16_in_cpuinfo("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert not native_bf16_in_cpuinfo("model name : something with avx512_bf16 in the name\n")
