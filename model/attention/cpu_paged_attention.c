/*
 * Attention of a few query tokens per sequence over that sequence's paged KV cache, read in
 * place on the CPU: no gather of the context into a dense tensor, and each sequence costs its
 * own length, not the batch's longest.
 *
 * Layouts (float32, as model/attention/metadata.py describes them):
 *   q, out    [num_tokens, num_heads, head_dim], any token/head stride, unit stride in dim
 *   k_cache   [num_blocks, block_size, num_kv_heads, head_dim], contiguous (v_cache alike)
 *   row r     queries query_start[r] .. query_start[r] + query_len[r] - 1, the last
 *             query_len[r] positions of its seq_len[r] tokens; its blocks are
 *             block_tables[table_row[r] * table_stride ...]
 * Query i of row r sits at position pos = seq_len - query_len + i and sees keys
 * max(0, pos - window + 1) .. pos (window 0: no sliding window), as the torch reference does.
 *
 * Work is split over (row, KV head): the query heads that share a KV head take each block from
 * memory once, and nothing is allocated. One pass over the context, a block at a time, with an
 * online softmax in float32: a block's scores, its maximum, the running sum and output
 * rescaled when the maximum grows, then the block's exponentials (libmvec's vector expf)
 * weight its values.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* libmvec's vector expf: declared so the exponential loop vectorizes (glibc declares it only
 * under -ffast-math, whose finite-math assumptions this kernel does not make). */
__attribute__((simd("notinbranch"))) float expf(float);

/* One query token of one KV head's group: softmax(q K^T * scale) V over keys first..pos. */
static inline __attribute__((always_inline)) void attend(
    const float *q_head, int64_t q_head_stride, const float *k_cache, const float *v_cache,
    const int32_t *table, int64_t first, int64_t pos, int64_t kv_head, int64_t group,
    const int64_t head_dim, int64_t block_size, int64_t token_stride, float scale,
    float *out_head, int64_t out_head_stride)
{
    const int64_t block_stride = token_stride * block_size;
    float scores[group][block_size];
    float acc[group][head_dim];
    float max[group], sum[group];
    for (int64_t g = 0; g < group; g++) {
        max[g] = -FLT_MAX;
        sum[g] = 0.0f;
        memset(acc[g], 0, sizeof(float) * (size_t)head_dim);
    }
    for (int64_t start = first - first % block_size; start <= pos; start += block_size) {
        const int64_t base = (int64_t)table[start / block_size] * block_stride
                             + kv_head * head_dim;
        const int64_t lo = start < first ? first - start : 0;
        const int64_t hi = pos - start + 1 < block_size ? pos - start + 1 : block_size;
        for (int64_t g = 0; g < group; g++) {
            const float *query = q_head + g * q_head_stride;
            float block_max = -FLT_MAX;
            for (int64_t t = lo; t < hi; t++) {
                const float *key = k_cache + base + t * token_stride;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int64_t d = 0; d < head_dim; d++) dot += query[d] * key[d];
                dot *= scale;
                scores[g][t] = dot;
                block_max = dot > block_max ? dot : block_max;
            }
            if (block_max > max[g]) {
                /* Rescale what was summed under the old maximum (nothing at the first block:
                 * exp(-FLT_MAX - x) is 0). */
                const float correction = expf(max[g] - block_max);
                sum[g] *= correction;
#pragma omp simd
                for (int64_t d = 0; d < head_dim; d++) acc[g][d] *= correction;
                max[g] = block_max;
            }
            const float m = max[g];
            float block_sum = 0.0f;
#pragma omp simd reduction(+ : block_sum)
            for (int64_t t = lo; t < hi; t++) {
                const float e = expf(scores[g][t] - m);
                scores[g][t] = e;
                block_sum += e;
            }
            sum[g] += block_sum;
        }
        for (int64_t t = lo; t < hi; t++) {
            const float *value = v_cache + base + t * token_stride;
            for (int64_t g = 0; g < group; g++) {
                const float weight = scores[g][t];
#pragma omp simd
                for (int64_t d = 0; d < head_dim; d++) acc[g][d] += weight * value[d];
            }
        }
    }
    for (int64_t g = 0; g < group; g++) {
        float *o = out_head + g * out_head_stride;
        const float inverse = 1.0f / sum[g];
#pragma omp simd
        for (int64_t d = 0; d < head_dim; d++) o[d] = acc[g][d] * inverse;
    }
}

void paged_attention_f32(
    const float *q, int64_t q_token_stride, int64_t q_head_stride,
    const float *k_cache, const float *v_cache,
    const int32_t *block_tables, int64_t table_stride, const int64_t *table_row,
    const int64_t *query_start, const int64_t *query_len, const int64_t *seq_len,
    int64_t num_rows, float *out, int64_t out_token_stride, int64_t out_head_stride,
    int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
    float scale, int64_t window, int num_threads)
{
    const int64_t group = num_heads / num_kv_heads;
    const int64_t token_stride = num_kv_heads * head_dim;

#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t task = 0; task < num_rows * num_kv_heads; task++) {
        const int64_t row = task / num_kv_heads, kv_head = task % num_kv_heads;
        const int64_t len = seq_len[row], queries = query_len[row];
        const int32_t *table = block_tables + table_row[row] * table_stride;
        for (int64_t i = 0; i < queries; i++) {
            const int64_t pos = len - queries + i;
            const int64_t first = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
            const int64_t token = query_start[row] + i;
            const float *q_head = q + token * q_token_stride + kv_head * group * q_head_stride;
            float *out_head = out + token * out_token_stride + kv_head * group * out_head_stride;
            /* The common head sizes as constants, so the inner loops unroll fully. */
#define ATTEND(dim) attend(q_head, q_head_stride, k_cache, v_cache, table, first, pos, \
                           kv_head, group, dim, block_size, token_stride, scale, out_head, \
                           out_head_stride)
            switch (head_dim) {
            case 64: ATTEND(64); break;
            case 128: ATTEND(128); break;
            default: ATTEND(head_dim);
            }
#undef ATTEND
        }
    }
}
