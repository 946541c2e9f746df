/* The backward of a normalization + activation in two fused passes, for the CPU.
 *
 * From the one tensor saved for backward (s: the output y of an invertible activation, or
 * the input x) and the incoming gradient g, each element gives on the fly
 *
 *     dz = dL/dz (the gradient at the pre-activation z)   and   u (y's preimage z, or x),
 *
 * with nothing full-size materialized:
 *
 *     pass 1:  S1[n,c] = Σ dz,  S2[n,c] = Σ dz·u   over the positions of (n, c), in double
 *     then     the per-(n, c) coefficients of each statistic (see norm_backward in
 *              __init__.py for the math)
 *     pass 2:  dx = c1[n,c]·dz + c2[n,c]·u + c3[n,c]
 *
 * Kinds (how dz and u come from s and g; p is the leaky_relu slope, a, b the per-(n, c)
 * affine map z = a·x + b = γ·r·(x − μ) + β of a recomputed pre-activation):
 *     ident      dz = g,                          u = s      (identity: s is y = z, or x)
 *     inv_leaky  dz = s > 0 ? g : p·g,            u = s > 0 ? s : s/p   (s = leaky_relu(z))
 *     rec_relu   dz = z > 0 ? g : 0,              u = s      (s = x)
 *     rec_leaky  dz = z > 0 ? g : p·g,            u = s      (s = x)
 * A NaN z gives dz = 0 for relu, p·g for leaky_relu: ATen's threshold/leaky_relu backward.
 *
 * Layouts:
 *   nchw (contiguous): fused_nchw_* takes one statistic at a time, both passes back to back
 *     (its rows are still in the cache for the second); a thread takes statistics [st0, st1).
 *   nhwc (channels-last): a statistic's elements are spread over the whole tensor, so the
 *     passes are separate calls: sums_nhwc_* (a thread takes positions q = n·HW + i in
 *     [q0, q1) and adds into its own (N, C) sums), coefs_* (all statistics), apply_nhwc_*.
 *
 * Plain C99; the loops vectorize with -O3 (the pragmas need -fopenmp-simd, no OpenMP runtime).
 */
#include <stdint.h>

#define BODIES(T, SUF)                                                                     \
static inline void ident_##SUF(T s, T g, T a, T b, T p, T ip, T *dz, T *u) {               \
    (void)a; (void)b; (void)p; (void)ip; *dz = g; *u = s;                                   \
}                                                                                           \
static inline void inv_leaky_##SUF(T s, T g, T a, T b, T p, T ip, T *dz, T *u) {           \
    (void)a; (void)b; *dz = s > 0 ? g : g * p; *u = s > 0 ? s : s * ip;                     \
}                                                                                           \
static inline void rec_relu_##SUF(T s, T g, T a, T b, T p, T ip, T *dz, T *u) {            \
    (void)p; (void)ip; T z = a * s + b; *dz = z > 0 ? g : (T)0; *u = s;                     \
}                                                                                           \
static inline void rec_leaky_##SUF(T s, T g, T a, T b, T p, T ip, T *dz, T *u) {           \
    (void)ip; T z = a * s + b; *dz = z > 0 ? g : g * p; *u = s;                             \
}

/* The nhwc passes. a and b, (N, C), are read by the rec_ kinds only but always valid. */
#define KERNELS(T, SUF, KIND)                                                               \
void sums_nhwc_##KIND##_##SUF(const T *s, const T *g, const T *a, const T *b, int64_t q0,   \
                              int64_t q1, int64_t hw, int64_t c, double slope, double *s1,  \
                              double *s2) {                                                 \
    const T p = (T)slope, ip = (T)(1.0 / slope);                                            \
    for (int64_t q = q0; q < q1; q++) {                                                     \
        const int64_t nc = (q / hw) * c;                                                    \
        const T *sq = s + q * c, *gq = g + q * c;                                           \
        double *t1 = s1 + nc, *t2 = s2 + nc;                                                \
        _Pragma("omp simd")                                                                 \
        for (int64_t k = 0; k < c; k++) {                                                   \
            T dz, u;                                                                        \
            KIND##_##SUF(sq[k], gq[k], a[nc + k], b[nc + k], p, ip,   \
                         &dz, &u);                                                          \
            t1[k] += dz;                                                                    \
            t2[k] += (double)(dz * u);                                                      \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
void apply_nhwc_##KIND##_##SUF(const T *s, const T *g, const T *a, const T *b,             \
                               const T *c1, const T *c2, const T *c3, T *dx, int64_t q0,    \
                               int64_t q1, int64_t hw, int64_t c, double slope) {           \
    const T p = (T)slope, ip = (T)(1.0 / slope);                                            \
    for (int64_t q = q0; q < q1; q++) {                                                     \
        const int64_t nc = (q / hw) * c;                                                    \
        const T *sq = s + q * c, *gq = g + q * c;                                           \
        T *dq = dx + q * c;                                                                 \
        _Pragma("omp simd")                                                                 \
        for (int64_t k = 0; k < c; k++) {                                                   \
            T dz, u;                                                                        \
            KIND##_##SUF(sq[k], gq[k], a[nc + k], b[nc + k], p, ip,   \
                         &dz, &u);                                                          \
            dq[k] = c1[nc + k] * dz + c2[nc + k] * u + c3[nc + k];                          \
        }                                                                                   \
    }                                                                                       \
}

/* Both passes for one statistic after the other, NCHW: the statistic's rows are still in
 * the cache (L2) when the second pass reads them again, so memory sees s and g once.
 * Statistic st of sn per sample (sn = 0: BatchNorm, one per channel over every sample)
 * holds rows n·C + first + t for t < cpg (sn > 0: n = st / sn, first = (st % sn)·cpg),
 * or rows t·C + st for t < N (sn = 0). Writes s1 = Σ dz and p = Σ dz·x̂ per row (for dγ,
 * dβ), and dx unless it is NULL. Returns 0 where a coefficient is not finite. */
#define FUSED(T, SUF, KIND)                                                                 \
int fused_nchw_##KIND##_##SUF(const T *s, const T *g, T *dx, int64_t n, int64_t c,          \
        int64_t hw, int64_t sn, int64_t cpg, int64_t st0, int64_t st1, double count,        \
        const T *gamma, const T *beta, const T *r, const T *mu, int invert, int fixed,      \
        double slope, double *s1, double *pp) {                                             \
    const T p = (T)slope, ip = (T)(1.0 / slope);                                            \
    const int64_t nrows = sn ? cpg : n;                                                     \
    int finite = 1;                                                                         \
    for (int64_t st = st0; st < st1; st++) {                                                \
        const double rr = r[st], m = invert ? 0.0 : (double)mu[st];                         \
        double ga = 0, gb = 0;                                                              \
        for (int pass = 0; pass < 2; pass++) {                                              \
            const double big_a = fixed ? 0.0 : ga / count, big_b = fixed ? 0.0 : gb / count;\
            if (pass == 1 && !dx) break;                                                    \
            for (int64_t t = 0; t < nrows; t++) {                                           \
                const int64_t row = sn ? (st / sn) * c + (st % sn) * cpg + t : t * c + st;  \
                const int64_t ch = row % c;                                                 \
                const double gm = gamma ? (double)gamma[ch] : 1.0;                          \
                const double be = beta ? (double)beta[ch] : 0.0;                            \
                const double al = invert ? 1.0 / gm : rr, de = invert ? -be / gm : -rr * m; \
                const T ar = (T)(gm * rr), br = (T)(be - m * gm * rr);                      \
                const T *sr = s + row * hw, *gr = g + row * hw;                             \
                if (pass == 0) {                                                            \
                    double acc1 = 0, acc2 = 0;                                              \
                    _Pragma("omp simd reduction(+:acc1,acc2)")                              \
                    for (int64_t i = 0; i < hw; i++) {                                      \
                        T dz, u;                                                            \
                        KIND##_##SUF(sr[i], gr[i], ar, br, p, ip, &dz, &u);                 \
                        acc1 += dz;                                                         \
                        acc2 += (double)(dz * u);                                           \
                    }                                                                       \
                    const double pr = al * acc2 + de * acc1;                                \
                    s1[row] = acc1;                                                         \
                    pp[row] = pr;                                                           \
                    ga += gm * acc1;                                                        \
                    gb += gm * pr;                                                          \
                } else {                                                                    \
                    const T k1 = (T)(rr * gm), k2 = (T)(-rr * big_b * al);                  \
                    const T k3 = (T)(-rr * (big_a + big_b * de));                           \
                    finite &= (k1 - k1 == 0) & (k2 - k2 == 0) & (k3 - k3 == 0);             \
                    T *dr = dx + row * hw;                                                  \
                    _Pragma("omp simd")                                                     \
                    for (int64_t i = 0; i < hw; i++) {                                      \
                        T dz, u;                                                            \
                        KIND##_##SUF(sr[i], gr[i], ar, br, p, ip, &dz, &u);                 \
                        dr[i] = k1 * dz + k2 * u + k3;                                      \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    return finite;                                                                          \
}

/* The per-(n, c) numbers between the two passes. Statistic of (n, c): n·sn + c/cpg
 * (BatchNorm sn = 0, cpg = 1: one per channel; GroupNorm sn = G, cpg = C/G; InstanceNorm
 * sn = C, cpg = 1); r and mu are per statistic, gamma and beta per channel (NULL: 1 and 0). */
#define SMALL(T, SUF)                                                                       \
void prepare_##SUF(int64_t n, int64_t c, int64_t sn, int64_t cpg, const T *gamma,           \
                   const T *beta, const T *r, const T *mu, T *a, T *b) {                    \
    /* z = a·x + b = γ·r·(x − μ) + β, the pre-activation a recompute kind rebuilds */        \
    for (int64_t i = 0; i < n; i++)                                                         \
        for (int64_t k = 0; k < c; k++) {                                                   \
            const int64_t st = i * sn + k / cpg;                                            \
            const T ak = (gamma ? gamma[k] : (T)1) * r[st];                                 \
            a[i * c + k] = ak;                                                              \
            b[i * c + k] = (beta ? beta[k] : (T)0) - mu[st] * ak;                           \
        }                                                                                   \
}                                                                                           \
/* From S1 = Σ dz and S2 = Σ dz·u: dγ, dβ and dx = c1·dz + c2·u + c3 (see __init__.py).     \
 * acc: 2·nstats zeroed doubles. fixed: the statistics are constants (BatchNorm in eval).    \
 * Returns 0 where a coefficient is not finite (the caller then takes another way). */      \
int coefs_##SUF(int64_t n, int64_t c, int64_t sn, int64_t cpg, int64_t nstats, double count, \
                const T *gamma, const T *beta, const T *r, const T *mu, int invert,         \
                int fixed, const double *s1, const double *s2, double *acc, T *coef,        \
                double *dgamma, double *dbeta) {                                            \
    double *ga = acc, *gb = acc + nstats;                                                   \
    for (int64_t i = 0; i < n; i++)                                                         \
        for (int64_t k = 0; k < c; k++) {                                                   \
            const int64_t st = i * sn + k / cpg, j = i * c + k;                             \
            const double g = gamma ? (double)gamma[k] : 1.0, be = beta ? (double)beta[k] : 0.0;\
            const double rr = r[st];                                                        \
            const double al = invert ? 1.0 / g : rr, de = invert ? -be / g : -rr * (double)mu[st];\
            const double p = al * s2[j] + de * s1[j];                                       \
            if (dgamma) dgamma[k] += p;                                                     \
            if (dbeta) dbeta[k] += s1[j];                                                   \
            ga[st] += g * s1[j];                                                            \
            gb[st] += g * p;                                                                \
        }                                                                                   \
    int finite = 1;                                                                         \
    for (int64_t i = 0; i < n; i++)                                                         \
        for (int64_t k = 0; k < c; k++) {                                                   \
            const int64_t st = i * sn + k / cpg, j = i * c + k;                             \
            const double g = gamma ? (double)gamma[k] : 1.0, be = beta ? (double)beta[k] : 0.0;\
            const double rr = r[st];                                                        \
            const double al = invert ? 1.0 / g : rr, de = invert ? -be / g : -rr * (double)mu[st];\
            const double big_a = fixed ? 0.0 : ga[st] / count, big_b = fixed ? 0.0 : gb[st] / count;\
            const T k1 = (T)(rr * g), k2 = (T)(-rr * big_b * al), k3 = (T)(-rr * (big_a + big_b * de));\
            coef[j] = k1;                                                                   \
            coef[n * c + j] = k2;                                                           \
            coef[2 * n * c + j] = k3;                                                       \
            finite &= (k1 - k1 == 0) & (k2 - k2 == 0) & (k3 - k3 == 0);                     \
        }                                                                                   \
    return finite;                                                                          \
}

#define ALL_KINDS(T, SUF)        \
    BODIES(T, SUF)               \
    SMALL(T, SUF)                \
    KERNELS(T, SUF, ident)       \
    KERNELS(T, SUF, inv_leaky)   \
    KERNELS(T, SUF, rec_relu)    \
    KERNELS(T, SUF, rec_leaky)   \
    FUSED(T, SUF, ident)         \
    FUSED(T, SUF, inv_leaky)     \
    FUSED(T, SUF, rec_relu)      \
    FUSED(T, SUF, rec_leaky)

ALL_KINDS(float, f32)
ALL_KINDS(double, f64)
