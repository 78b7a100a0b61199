// Host simulation of the tensor-core GEMM's index math (csrc/cuda/gemm/layout.h), built and run by
// tests/test_gemm_cuda.py::test_layout_simulation with the host compiler: no GPU needed.
//
// For each tile config of csrc/cuda/matmul.cu, both element sizes and all four operand layouts,
// it runs one block's main loop and epilogue the way the kernel does, with the kernel's own
// functions (copy_plan, ldmatrix_a/b, tf32_a/b, acc_coord, epilogue_element, tile_of), against
// an independent model of the hardware written from the PTX ISA: what ldmatrix (with and without
// .trans) hands each lane, which fragment elements mma.m16n8k16 / m16n8k8 multiply, and which
// accumulator element each lane holds. Each output must equal a direct sum (small integers,
// exact in float). It also checks: every stage element written exactly once per k tile, cp.async
// sources and destinations 16-byte aligned, ldmatrix rows and TF32 / accumulator shared-memory
// accesses free of bank conflicts, and tile_of a bijection.
// Exit status 0 and "ok" on success; the first failure is printed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <vector>

#include "cuda/gemm/layout.h"

using namespace fastops::cuda::gemm_impl;

#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (!(cond)) {                                               \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                  \
      std::printf("\n");                                         \
      std::exit(1);                                              \
    }                                                            \
  } while (0)

// An operand [rows_mn, k] (A: [m, k]; B stored as [n, k]) in global memory, K-major (k contiguous,
// leading dimension ld >= k, a multiple of VEC) or MN-major (mn contiguous).
struct Operand {
  std::vector<float> data;
  bool kmajor;
  int64_t ld;
  float at(int64_t i, int64_t p) const { return kmajor ? data[i * ld + p] : data[p * ld + i]; }
};

Operand make_operand(int64_t rows, int64_t k, bool kmajor, int vec, unsigned seed) {
  Operand o{{}, kmajor, 0};
  const int64_t inner = kmajor ? k : rows, outer = kmajor ? rows : k;
  o.ld = (inner + vec - 1) / vec * vec + vec;  // padded: aligned, and not equal to the extent
  o.data.assign(outer * o.ld, 1e30f);          // padding must never be read
  for (int64_t r = 0; r < outer; ++r)
    for (int64_t c = 0; c < inner; ++c) o.data[r * o.ld + c] = static_cast<float>(((r * 7 + c * 13 + seed) % 9) - 4);
  return o;
}

// The stage for one operand after the kernel's copy_stage: returns the smem array.
template <class Cfg>
std::vector<float> copy_stage(const Operand& o, int rows_mn, int64_t mn0, int64_t k0, int64_t mn, int64_t k,
                              int ld_smem, int stage_elems) {
  std::vector<float> smem(stage_elems, -7777.0f);
  std::vector<int> writes(stage_elems, 0);
  const int chunks = rows_mn * Cfg::BK / Cfg::VEC;
  CHECK(chunks % Cfg::THREADS == 0, "chunks %d", chunks);
  for (int t = 0; t < Cfg::THREADS; ++t)
    for (int i = 0; i < chunks / Cfg::THREADS; ++i) {
      const ChunkCopy c = copy_plan(t + i * Cfg::THREADS, o.kmajor, rows_mn, Cfg::BK, Cfg::VEC, o.ld, mn0, k0, mn, k,
                                    ld_smem);
      CHECK((c.dst * Cfg::ELEM) % 16 == 0, "dst %d", c.dst);
      CHECK((c.src * Cfg::ELEM) % 16 == 0, "src %lld", (long long)c.src);
      CHECK(c.valid >= 0 && c.valid <= Cfg::VEC, "valid %d", c.valid);
      CHECK(c.dst + Cfg::VEC <= stage_elems, "dst %d past the stage", c.dst);
      for (int e = 0; e < Cfg::VEC; ++e) {
        if (e < c.valid) CHECK(c.src + e < (int64_t)o.data.size() && o.data[c.src + e] != 1e30f, "read padding");
        smem[c.dst + e] = e < c.valid ? o.data[c.src + e] : 0.0f;
        ++writes[c.dst + e];
      }
    }
  // Every element the fragments can read (the rows_mn x BK region) written exactly once.
  for (int r = 0; r < (o.kmajor ? rows_mn : Cfg::BK); ++r)
    for (int c = 0; c < (o.kmajor ? Cfg::BK : rows_mn); ++c)
      CHECK(writes[r * ld_smem + c] == 1, "stage element (%d, %d) written %d times", r, c, writes[r * ld_smem + c]);
  return smem;
}

// Model of ldmatrix.x4 (PTX ISA): lane l supplies the address of row l % 8 of matrix l / 8; lane l
// receives, of each matrix j, elements (row l / 4, cols 2 (l % 4), +1), or with .trans
// (rows 2 (l % 4), +1, col l / 4). out[lane][j][0..1]: the two 16-bit halves of register j.
void ldmatrix(const std::vector<float>& smem, const int (&row_addr)[32], bool trans, float (&out)[32][4][2]) {
  for (int j = 0; j < 4; ++j) {
    std::set<int> groups;  // 16-byte bank groups of one matrix's 8 rows: conflict-free if 8 distinct
    for (int r = 0; r < 8; ++r) groups.insert((row_addr[8 * j + r] * 2 / 16) % 8);
    CHECK(groups.size() == 8, "ldmatrix bank conflict in matrix %d", j);
    for (int l = 0; l < 32; ++l)
      for (int h = 0; h < 2; ++h)
        out[l][j][h] = trans ? smem[row_addr[8 * j + 2 * (l % 4) + h] + l / 4] : smem[row_addr[8 * j + l / 4] + 2 * (l % 4) + h];
  }
}

template <class Cfg>
void check_config(int64_t m, int64_t n, int64_t k, bool a_kmajor, bool b_kmajor, int64_t tm, int64_t tn) {
  const Operand a = make_operand(m, k, a_kmajor, Cfg::VEC, 1), b = make_operand(n, k, b_kmajor, Cfg::VEC, 5);
  const int lda = a_kmajor ? Cfg::LD_A_K : Cfg::LD_A_MN, ldb = b_kmajor ? Cfg::LD_B_K : Cfg::LD_B_MN;
  CHECK((a_kmajor ? Cfg::BM * lda : Cfg::BK * lda) <= Cfg::A_STAGE, "A stage size");
  CHECK((b_kmajor ? Cfg::BN * ldb : Cfg::BK * ldb) <= Cfg::B_STAGE, "B stage size");
  const int64_t m0 = tm * Cfg::BM, n0 = tn * Cfg::BN;
  // acc[warp][lane][mi][ni][reg]
  std::vector<float> acc(Cfg::WARPS * 32 * Cfg::MI * Cfg::NI * 4, 0.0f);
  auto A = [&](int w, int l, int mi, int ni, int r) -> float& {
    return acc[(((w * 32 + l) * Cfg::MI + mi) * Cfg::NI + ni) * 4 + r];
  };
  for (int64_t k0 = 0; k0 < k; k0 += Cfg::BK) {
    const std::vector<float> sa = copy_stage<Cfg>(a, Cfg::BM, m0, k0, m, k, lda, Cfg::A_STAGE);
    const std::vector<float> sb = copy_stage<Cfg>(b, Cfg::BN, n0, k0, n, k, ldb, Cfg::B_STAGE);
    for (int w = 0; w < Cfg::WARPS; ++w) {
      const int wm0 = (w % Cfg::WARPS_M) * Cfg::WM, wn0 = (w / Cfg::WARPS_M) * Cfg::WN;
      for (int kk = 0; kk < Cfg::BK; kk += Cfg::MMA_K) {
        // fa[mi][lane][reg][half], fb[ni][lane][reg][half]: what each lane's registers hold.
        std::vector<float> fa(Cfg::MI * 32 * 4 * 2), fb(Cfg::NI * 32 * 2 * 2);
        if (Cfg::ELEM == 2) {
          for (int mi = 0; mi < Cfg::MI; ++mi) {
            int addr[32];
            for (int l = 0; l < 32; ++l) {
              const Coord c = ldmatrix_a(l, a_kmajor, wm0 + mi * 16, kk);
              addr[l] = c.row * lda + c.col;
            }
            float out[32][4][2];
            ldmatrix(sa, addr, !a_kmajor, out);
            for (int l = 0; l < 32; ++l)
              for (int r = 0; r < 4; ++r)
                for (int h = 0; h < 2; ++h) fa[((mi * 32 + l) * 4 + r) * 2 + h] = out[l][r][h];
          }
          for (int nj = 0; nj < Cfg::NI / 2; ++nj) {
            int addr[32];
            for (int l = 0; l < 32; ++l) {
              const Coord c = ldmatrix_b(l, b_kmajor, wn0 + nj * 16, kk);
              addr[l] = c.row * ldb + c.col;
            }
            float out[32][4][2];
            ldmatrix(sb, addr, !b_kmajor, out);
            for (int l = 0; l < 32; ++l)
              for (int r = 0; r < 4; ++r)  // registers 0, 1 -> tile 2 nj; 2, 3 -> tile 2 nj + 1
                for (int h = 0; h < 2; ++h) fb[(((2 * nj + r / 2) * 32 + l) * 2 + r % 2) * 2 + h] = out[l][r][h];
          }
        } else {
          for (int mi = 0; mi < Cfg::MI; ++mi)
            for (int r = 0; r < 4; ++r) {
              std::set<int> banks;
              for (int l = 0; l < 32; ++l) {
                const Coord e = tf32_a(l, r);
                const int mm = wm0 + mi * 16 + e.row, kx = kk + e.col;
                const int off = a_kmajor ? mm * lda + kx : kx * lda + mm;
                banks.insert(off % 32);
                fa[((mi * 32 + l) * 4 + r) * 2] = sa[off];
              }
              CHECK(banks.size() == 32, "TF32 A load bank conflict (reg %d)", r);
            }
          for (int ni = 0; ni < Cfg::NI; ++ni)
            for (int r = 0; r < 2; ++r) {
              std::set<int> banks;
              for (int l = 0; l < 32; ++l) {
                const Coord e = tf32_b(l, r);
                const int nn = wn0 + ni * 8 + e.row, kx = kk + e.col;
                const int off = b_kmajor ? nn * ldb + kx : kx * ldb + nn;
                banks.insert(off % 32);
                fb[((ni * 32 + l) * 2 + r) * 2] = sb[off];
              }
              CHECK(banks.size() == 32, "TF32 B load bank conflict (reg %d)", r);
            }
        }
        // Hardware model of mma (PTX ISA fragment layouts), g = lane / 4, t = lane % 4.
        for (int mi = 0; mi < Cfg::MI; ++mi)
          for (int ni = 0; ni < Cfg::NI; ++ni) {
            float at[16][16] = {}, bt[16][8] = {};
            for (int l = 0; l < 32; ++l) {
              const int g = l / 4, t = l % 4;
              const float* ra = &fa[(mi * 32 + l) * 4 * 2];
              const float* rb = &fb[(ni * 32 + l) * 2 * 2];
              if (Cfg::ELEM == 2) {  // m16n8k16: a{0,1} (g, 2t+h) a{2,3} (g+8, ..) a{4,5} (g, 2t+8+h) a{6,7} (g+8, ..)
                for (int h = 0; h < 2; ++h) {
                  at[g][2 * t + h] = ra[0 * 2 + h];
                  at[g + 8][2 * t + h] = ra[1 * 2 + h];
                  at[g][2 * t + 8 + h] = ra[2 * 2 + h];
                  at[g + 8][2 * t + 8 + h] = ra[3 * 2 + h];
                  bt[2 * t + h][g] = rb[0 * 2 + h];      // b{0,1}: k = 2t + h, n = g
                  bt[2 * t + 8 + h][g] = rb[1 * 2 + h];  // b{2,3}: k = 2t + 8 + h
                }
              } else {  // m16n8k8 tf32: a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4); b0 (t, g) b1 (t+4, g)
                at[g][t] = ra[0];
                at[g + 8][t] = ra[2];
                at[g][t + 4] = ra[4];
                at[g + 8][t + 4] = ra[6];
                bt[t][g] = rb[0];
                bt[t + 4][g] = rb[2];
              }
            }
            for (int l = 0; l < 32; ++l) {
              const int g = l / 4, t = l % 4;
              // c0 (g, 2t) c1 (g, 2t+1) c2 (g+8, 2t) c3 (g+8, 2t+1)
              const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
              for (int r = 0; r < 4; ++r) {
                float s = 0.0f;
                for (int q = 0; q < Cfg::MMA_K; ++q) s += at[rows[r]][q] * bt[q][cols[r]];
                A(w, l, mi, ni, r) += s;
              }
            }
          }
      }
    }
  }
  // Epilogue: accumulators -> float32 C tile through acc_coord (float2 stores), then the
  // epilogue walk; compare with the direct sum.
  std::vector<float> tile(Cfg::BM * Cfg::LD_C, -9999.0f);
  std::vector<int> writes(Cfg::BM * Cfg::LD_C, 0);
  for (int w = 0; w < Cfg::WARPS; ++w) {
    const int wm0 = (w % Cfg::WARPS_M) * Cfg::WM, wn0 = (w / Cfg::WARPS_M) * Cfg::WN;
    for (int mi = 0; mi < Cfg::MI; ++mi)
      for (int ni = 0; ni < Cfg::NI; ++ni)
        for (int h = 0; h < 2; ++h) {
          for (int half = 0; half < 2; ++half) {  // 64-bit stores: each half-warp one wavefront
            std::set<int> banks;
            for (int l = 16 * half; l < 16 * half + 16; ++l) {
              const Coord e = acc_coord(l, 2 * h);
              const int off = (wm0 + mi * 16 + e.row) * Cfg::LD_C + wn0 + ni * 8 + e.col;
              CHECK(off % 2 == 0, "float2 store misaligned");
              banks.insert(off % 32);
              banks.insert((off + 1) % 32);
            }
            CHECK(banks.size() == 32, "accumulator store bank conflict");
          }
          for (int l = 0; l < 32; ++l) {
            const Coord e = acc_coord(l, 2 * h);
            const int off = (wm0 + mi * 16 + e.row) * Cfg::LD_C + wn0 + ni * 8 + e.col;
            tile[off] = A(w, l, mi, ni, 2 * h);
            tile[off + 1] = A(w, l, mi, ni, 2 * h + 1);
            ++writes[off];
            ++writes[off + 1];
          }
        }
  }
  CHECK(Cfg::BM * Cfg::LD_C * 4 <= Cfg::SMEM_BYTES, "C tile fits the shared memory");
  for (bool rows_fast : {false, true}) {
    std::vector<int> seen(Cfg::BM * Cfg::BN, 0);
    for (int idx = 0; idx < Cfg::BM * Cfg::BN; ++idx) {
      const Coord e = epilogue_element(idx, rows_fast, Cfg::BM, Cfg::BN);
      CHECK(e.row >= 0 && e.row < Cfg::BM && e.col >= 0 && e.col < Cfg::BN, "epilogue element out of the tile");
      ++seen[e.row * Cfg::BN + e.col];
      CHECK(writes[e.row * Cfg::LD_C + e.col] == 1, "C tile element (%d, %d) written %d times", e.row, e.col,
            writes[e.row * Cfg::LD_C + e.col]);
      const int64_t i = m0 + e.row, j = n0 + e.col;
      if (i >= m || j >= n) continue;  // masked in Epilogue::store
      float want = 0.0f;
      for (int64_t p = 0; p < k; ++p) want += a.at(i, p) * b.at(j, p);
      const float got = tile[e.row * Cfg::LD_C + e.col];
      CHECK(got == want, "C[%lld, %lld] = %g, want %g (m %lld n %lld k %lld, kmajor a %d b %d, elem %d, BM %d)",
            (long long)i, (long long)j, got, want, (long long)m, (long long)n, (long long)k, a_kmajor, b_kmajor,
            Cfg::ELEM, Cfg::BM);
    }
    for (int v : seen) CHECK(v == 1, "epilogue walk is not a bijection");
  }
}

template <class Cfg>
void check_all() {
  // (m, n, k) and the block tile: interior and edge tiles, k tails, k shorter than one tile.
  struct Case { int64_t m, n, k, tm, tn; };
  const Case cases[] = {{Cfg::BM, Cfg::BN, 3 * Cfg::BK, 0, 0},   {Cfg::BM + 17, Cfg::BN + 9, 2 * Cfg::BK + 5, 1, 1},
                        {Cfg::BM * 2 + 1, 2 * Cfg::BN + 3, 1, 2, 1}, {5, 3, Cfg::BK - 1, 0, 0},
                        {1, 1, 7, 0, 0}};
  for (const Case& c : cases)
    for (int layout = 0; layout < 4; ++layout) check_config<Cfg>(c.m, c.n, c.k, layout & 1, layout & 2, c.tm, c.tn);
}

void check_tile_order() {
  for (int64_t tm : {1, 3, 8, 9, 17})
    for (int64_t tn : {1, 2, 5, 13}) {
      std::set<std::pair<int, int>> seen;
      for (int64_t pid = 0; pid < tm * tn; ++pid) {
        const Coord t = tile_of(pid, tm, tn, 8);
        CHECK(t.row >= 0 && t.row < tm && t.col >= 0 && t.col < tn, "tile_of out of range");
        seen.insert({t.row, t.col});
      }
      CHECK((int64_t)seen.size() == tm * tn, "tile_of not a bijection for %lld x %lld", (long long)tm, (long long)tn);
    }
}

// The instantiations of csrc/cuda/matmul.cu (BigTile, SmallTile) for 16-bit and 32-bit elements.
int main() {
  check_tile_order();
  check_all<Tile<128, 128, 64, 32, 3, 2>>();
  check_all<Tile<64, 64, 32, 32, 4, 2>>();
  check_all<Tile<128, 128, 64, 32, 3, 4>>();
  check_all<Tile<64, 64, 32, 32, 4, 4>>();
  std::printf("ok\n");
  return 0;
}
