// Launch-plan probe for the static cost model (bsconv_fused/bench/static/cuda.py): prints, for each geometry on
// stdin, the launches forward() and backward() make, using the extension's own planners on a device described on
// the command line (no GPU needed). One source of truth: the planners are the ones in forward.cu / backward.cu,
// included here; only the two-line composition forward_typed / backward_typed perform around them is restated
// below (marked), because those functions also launch.
//
// Build (host pass only matters; compiling the device pass for sm_75 gives empty kernel bodies and takes seconds):
//   nvcc -std=c++17 -arch=sm_75 -I csrc csrc/cuda/probe/plan_probe.cu -o plan_probe
// Usage: plan_probe SM_COUNT SMEM_OPTIN SMEM_PER_SM < lines of
//   N C_in C_out H W kh kw stride_h stride_w pad_h pad_w dil_h dil_w esz
// Output, one line per launch: "<line#> <kernel> BN=.. blocks=.. smem=.. key=value ..." and "<line#> end".
// Not built by setup.py (it globs csrc/cuda/*.cu only).
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "../forward.cu"
#include "../backward.cu"

using namespace bsconv_fused::cuda;
using namespace bsconv_fused::cuda::detail;

namespace {

void print_out_plan(const OutTilePlan& p) {
  std::printf(" TOH=%d TOW=%d TOPIX=%d IH=%d IW=%d P=%d P_pad=%d LDT=%d MCH=%d tiles_h=%d tiles_w=%d n_cob=%d "
              "n_spatial=%lld gemm=%d",
              p.TOH, p.TOW, p.TOPIX, p.IH, p.IW, p.P, p.P_pad, p.LDT, p.MCH, p.tiles_h, p.tiles_w, p.n_cob,
              static_cast<long long>(p.n_spatial), p.gemm ? 1 : 0);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s SM_COUNT SMEM_OPTIN SMEM_PER_SM < geometries\n", argv[0]);
    return 2;
  }
  DeviceLimits d;
  d.ok = true;
  d.index = 0;
  d.cc = 90;
  d.sm_count = std::atoi(argv[1]);
  d.smem_optin = std::atoi(argv[2]);
  d.smem_per_sm = std::atoi(argv[3]);
  long long N, C_in, C_out, H, W;
  int kh, kw, sh, sw, ph, pw, dh, dw, esz, line = 0;
  while (std::cin >> N >> C_in >> C_out >> H >> W >> kh >> kw >> sh >> sw >> ph >> pw >> dh >> dw >> esz) {
    ++line;
    Geometry g{};
    g.N = N, g.C_in = C_in, g.C_out = C_out, g.H = H, g.W = W, g.kh = kh, g.kw = kw;
    g.stride_h = sh, g.stride_w = sw, g.pad_h = ph, g.pad_w = pw, g.dil_h = dh, g.dil_w = dw;
    g.Ho = (H + 2 * ph - int64_t(dh) * (kh - 1) - 1) / sh + 1;
    g.Wo = (W + 2 * pw - int64_t(dw) * (kw - 1) - 1) / sw + 1;
    const std::string why = geometry_refusal(g);
    if (!why.empty()) {
      std::printf("%d refused %s\n", line, why.c_str());
      continue;
    }
    // forward_typed (restated): BN from C_out, the plan for the output layout (staged = channels_last output).
    const int BN = pick_block_n(g.C_out);
    for (const bool staged : {false, true}) {
      const OutTilePlan p = pick_out_plan(g, esz, BN, forward_use(staged), d);
      const std::string r = forward_plan_refusal(p, d);
      if (!r.empty()) {
        std::printf("%d refused forward%s %s\n", line, staged ? "_staged" : "", r.c_str());
        continue;
      }
      std::printf("%d forward%s BN=%d blocks=%lld smem=%d", line, staged ? "_staged" : "", BN,
                  static_cast<long long>(out_plan_blocks(p)), p.smem);
      print_out_plan(p);
      std::printf("\n");
    }
    // backward_typed (restated) with every gradient but dmid requested, atomics (deterministic off: the default).
    const BackwardPlans b = backward_plans(g, esz, true, true, d);
    const std::string r = backward_plan_refusal(b, true, true, true, d);
    if (!r.empty()) {
      std::printf("%d refused backward %s\n", line, r.c_str());
    } else {
      std::printf("%d dx BN=%d blocks=%lld smem=%d TIH=%d TIW=%d MQ=%d MQ_pad=%d tiles_h=%d tiles_w=%d n_cib=%d "
                  "GHm=%d GWm=%d stage_gy=%d\n",
                  line, b.dx.BN, static_cast<long long>(b.dx.blocks), b.dx.smem, b.dx.TIH, b.dx.TIW, b.dx.MQ,
                  b.dx.MQ_pad, b.dx.tiles_h, b.dx.tiles_w, b.dx.n_cib, b.dx.GHm, b.dx.GWm, b.dx.stage_gy ? 1 : 0);
      std::printf("%d dpw BN=%d blocks=%lld smem=%d BM=%d n_ob=%d n_ib=%d splits=%lld chunks=%lld\n", line, b.dpw.BN,
                  static_cast<long long>(b.dpw.splits * b.dpw.n_ob * b.dpw.n_ib), b.dpw.smem, b.dpw.BM, b.dpw.n_ob,
                  b.dpw.n_ib, static_cast<long long>(b.dpw.splits), static_cast<long long>(b.dpw.chunks));
      std::printf("%d wgrad BN=%d blocks=%lld smem=%d", line, pick_block_n(g.C_out),
                  static_cast<long long>(b.wgrad.n_spatial * b.wgrad.n_cob), b.wgrad.smem);
      print_out_plan(b.wgrad);
      std::printf("\n");
    }
    std::printf("%d end\n", line);
  }
  return 0;
}
