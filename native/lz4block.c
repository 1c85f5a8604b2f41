/*
 * lz4block: the replication payload's LZ4 block format (the decompressed size as a u32 LE, then
 * one LZ4 block: what lz4-napi's compressSync writes and uncompressSync reads) into and out of
 * buffers the caller supplies, so that segment payloads can come from the buffer pool instead of
 * a fresh allocation per frame. From the system's liblz4 (Debian: liblz4-dev to build, liblz4-1
 * to run); a separate addon, so that a machine without it falls back to lz4-napi.
 *   compressBound(n) -> bytes a compressed payload of n bytes may take (size prefix included)
 *   compressInto(src, dst) -> bytes written to dst (size prefix included); 0 if it did not fit
 *   decompressInto(src, dst) -> bytes written to dst, or -1 when src is not a valid block of
 *       exactly dst.length bytes (the caller sizes dst from the prefix, after checking it)
 */
#include <lz4.h>
#include <node_api.h>
#include <stdint.h>

/* The (source, destination) buffers of a call. */
typedef struct {
  uint8_t *src, *dst;
  size_t src_len, dst_len;
} io_pair;

static int get_pair(napi_env env, napi_callback_info info, io_pair *io) {
  size_t argc = 2;
  napi_value argv[2];
  void *src, *dst;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || napi_get_buffer_info(env, argv[0], &src, &io->src_len) != napi_ok || napi_get_buffer_info(env, argv[1], &dst, &io->dst_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (source Buffer, destination Buffer)");
    return 0;
  }
  if (io->src_len > LZ4_MAX_INPUT_SIZE || io->dst_len > LZ4_MAX_INPUT_SIZE) {
    napi_throw_range_error(env, NULL, "buffer larger than LZ4 allows");
    return 0;
  }
  io->src = src;
  io->dst = dst;
  return 1;
}

static napi_value int_result(napi_env env, int64_t v) {
  napi_value result;
  napi_create_int64(env, v, &result);
  return result;
}

static napi_value compress_bound(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t n = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_int64(env, argv[0], &n) != napi_ok || n < 0 || n > LZ4_MAX_INPUT_SIZE) {
    napi_throw_range_error(env, NULL, "compressBound(n): n outside 0..LZ4_MAX_INPUT_SIZE");
    return NULL;
  }
  return int_result(env, 4 + (int64_t)LZ4_compressBound((int)n));
}

static napi_value compress_into(napi_env env, napi_callback_info info) {
  io_pair io;
  if (!get_pair(env, info, &io)) return NULL;
  if (io.dst_len <= 4) return int_result(env, 0);
  int n = LZ4_compress_default((const char *)io.src, (char *)io.dst + 4, (int)io.src_len, (int)(io.dst_len - 4));
  if (n <= 0) return int_result(env, 0);
  for (int i = 0; i < 4; i++) io.dst[i] = (io.src_len >> (8 * i)) & 0xff; /* the size prefix, LE */
  return int_result(env, n + 4);
}

static napi_value decompress_into(napi_env env, napi_callback_info info) {
  io_pair io;
  if (!get_pair(env, info, &io)) return NULL;
  if (io.src_len < 4) return int_result(env, -1);
  uint32_t declared = (uint32_t)io.src[0] | ((uint32_t)io.src[1] << 8) | ((uint32_t)io.src[2] << 16) | ((uint32_t)io.src[3] << 24);
  if (declared != io.dst_len) return int_result(env, -1);
  int n = LZ4_decompress_safe((const char *)io.src + 4, (char *)io.dst, (int)(io.src_len - 4), (int)io.dst_len);
  return int_result(env, n == (int)io.dst_len ? n : -1);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"compressBound", NULL, compress_bound, NULL, NULL, NULL, napi_enumerable, NULL},
    {"compressInto", NULL, compress_into, NULL, NULL, NULL, napi_enumerable, NULL},
    {"decompressInto", NULL, decompress_into, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, 3, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
