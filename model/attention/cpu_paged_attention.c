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
 * Work is split over rows (over (row, KV head) when there are too few rows for the threads),
 * and nothing is allocated. One pass over the context, a block at a time, with an online
 * softmax in float32: a block's scores, its maximum, the running sum and output rescaled when
 * the maximum grows, then the block's exponentials (libmvec's vector expf) weight its values.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* libmvec's vector expf: declared so the exponential loop vectorizes (glibc declares it only
 * under -ffast-math, whose finite-math assumptions this kernel does not make). */
__attribute__((simd("notinbranch"))) float expf(float);

/* One query token against the KV heads kv_begin..kv_end-1 of its sequence (each with its
 * group of query heads): softmax(q K^T * scale) V over keys first..pos, a block at a time. */
static inline __attribute__((always_inline)) void attend(
    const float *q_token, int64_t q_head_stride, const float *k_cache, const float *v_cache,
    const int32_t *table, int64_t first, int64_t pos, int64_t kv_begin, int64_t kv_end,
    int64_t group, const int64_t head_dim, int64_t block_size, int64_t token_stride,
    float scale, float *out_token, int64_t out_head_stride)
{
    const int64_t block_stride = token_stride * block_size;
    const int64_t heads = (kv_end - kv_begin) * group;
    float scores[heads][block_size];
    float acc[heads][head_dim];
    float max[heads], sum[heads];
    for (int64_t h = 0; h < heads; h++) {
        max[h] = -FLT_MAX;
        sum[h] = 0.0f;
        memset(acc[h], 0, sizeof(float) * (size_t)head_dim);
    }
    for (int64_t start = first - first % block_size; start <= pos; start += block_size) {
        const int64_t base = (int64_t)table[start / block_size] * block_stride;
        const int64_t lo = start < first ? first - start : 0;
        const int64_t hi = pos - start + 1 < block_size ? pos - start + 1 : block_size;
        for (int64_t h = 0; h < heads; h++) {
            const int64_t kv_head = kv_begin + h / group;
            const float *query = q_token + (kv_begin * group + h) * q_head_stride;
            float block_max = -FLT_MAX;
            for (int64_t t = lo; t < hi; t++) {
                const float *key = k_cache + base + t * token_stride + kv_head * head_dim;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int64_t d = 0; d < head_dim; d++) dot += query[d] * key[d];
                dot *= scale;
                scores[h][t] = dot;
                block_max = dot > block_max ? dot : block_max;
            }
            if (block_max > max[h]) {
                /* Rescale what was summed under the old maximum (nothing at the first block:
                 * exp(-FLT_MAX - x) is 0). */
                const float correction = expf(max[h] - block_max);
                sum[h] *= correction;
#pragma omp simd
                for (int64_t d = 0; d < head_dim; d++) acc[h][d] *= correction;
                max[h] = block_max;
            }
            const float m = max[h];
            float block_sum = 0.0f;
#pragma omp simd reduction(+ : block_sum)
            for (int64_t t = lo; t < hi; t++) {
                const float e = expf(scores[h][t] - m);
                scores[h][t] = e;
                block_sum += e;
            }
            sum[h] += block_sum;
        }
        for (int64_t t = lo; t < hi; t++) {
            for (int64_t h = 0; h < heads; h++) {
                const float *value = v_cache + base + t * token_stride
                                     + (kv_begin + h / group) * head_dim;
                const float weight = scores[h][t];
#pragma omp simd
                for (int64_t d = 0; d < head_dim; d++) acc[h][d] += weight * value[d];
            }
        }
    }
    for (int64_t h = 0; h < heads; h++) {
        float *o = out_token + (kv_begin * group + h) * out_head_stride;
        const float inverse = 1.0f / sum[h];
#pragma omp simd
        for (int64_t d = 0; d < head_dim; d++) o[d] = acc[h][d] * inverse;
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
    /* Enough rows to keep every thread busy: a task per row, reading its blocks front to back
     * (all KV heads of a token are adjacent). Few rows: a task per (row, KV head). */
    const int64_t heads_per_task = num_rows >= 4 * (int64_t)num_threads ? num_kv_heads : 1;
    const int64_t tasks_per_row = num_kv_heads / heads_per_task;

#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t task = 0; task < num_rows * tasks_per_row; task++) {
        const int64_t row = task / tasks_per_row;
        const int64_t kv_begin = task % tasks_per_row * heads_per_task;
        const int64_t len = seq_len[row], queries = query_len[row];
        const int32_t *table = block_tables + table_row[row] * table_stride;
        for (int64_t i = 0; i < queries; i++) {
            const int64_t pos = len - queries + i;
            const int64_t first = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
            const int64_t token = query_start[row] + i;
            /* The common head sizes as constants, so the inner loops unroll fully. */
#define ATTEND(dim) attend(q + token * q_token_stride, q_head_stride, k_cache, v_cache, table, \
                           first, pos, kv_begin, kv_begin + heads_per_task, group, dim, \
                           block_size, token_stride, scale, out + token * out_token_stride, \
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
