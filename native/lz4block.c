/*
 * lz4block: the replication payload's LZ4 block format (the decompressed size as a u32 LE, then
 * one LZ4 block: what lz4-napi's compressSync writes and uncompressSync reads) into and out of
 * buffers the caller supplies, so that segment payloads can come from the buffer pool instead of
 * a fresh allocation per frame. From the system's liblz4 (Debian: liblz4-dev to build, liblz4-1
 * to run); a separate addon, so that a machine without it falls back to lz4-napi.
 *   compressBound(n) -> bytes a compressed payload of n bytes may take (size prefix included)
 *   compressInto(src, dst) -> bytes written to dst (size prefix included); 0 if it did not fit
 *   compressIntoAsync(src, dst, callback) -> the same on the thread pool: callback(bytes)
 *       (the caller leaves both buffers alone until then; the addon holds references to them)
 *   decompressInto(src, dst) -> bytes written to dst, or -1 when src is not a valid block of
 *       exactly dst.length bytes (the caller sizes dst from the prefix, after checking it)
 */
#include <lz4.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>

/* The (source, destination) buffers of a call. */
typedef struct {
  uint8_t *src, *dst;
  size_t src_len, dst_len;
} io_pair;

/* The (source, destination) Buffers in argv[0..1]; throws and returns 0 when they are not. */
static int pair_of(napi_env env, size_t argc, napi_value *argv, io_pair *io) {
  void *src, *dst;
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

static int get_pair(napi_env env, napi_callback_info info, io_pair *io) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  return pair_of(env, argc, argv, io);
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

/* Compress with the size prefix; bytes written, 0 when the result did not fit. */
static int compress_prefixed(const io_pair *io) {
  if (io->dst_len <= 4) return 0;
  int n = LZ4_compress_default((const char *)io->src, (char *)io->dst + 4, (int)io->src_len, (int)(io->dst_len - 4));
  if (n <= 0) return 0;
  for (int i = 0; i < 4; i++) io->dst[i] = (io->src_len >> (8 * i)) & 0xff; /* the size prefix, LE */
  return n + 4;
}

typedef struct {
  io_pair io;
  int result;
  napi_async_work work;
  napi_ref src, dst, callback;
} compress_req;

static void compress_execute(napi_env env, void *data) {
  (void)env;
  compress_req *r = data;
  r->result = compress_prefixed(&r->io);
}

static void compress_complete(napi_env env, napi_status status, void *data) {
  compress_req *r = data;
  napi_value cb, global, argv[1];
  napi_get_reference_value(env, r->callback, &cb);
  napi_get_global(env, &global);
  napi_create_int64(env, status == napi_ok ? r->result : 0, &argv[0]);
  napi_delete_reference(env, r->src);
  napi_delete_reference(env, r->dst);
  napi_delete_reference(env, r->callback);
  napi_delete_async_work(env, r->work);
  free(r);
  napi_call_function(env, global, cb, 1, argv, NULL);
}

static napi_value compress_into_async(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], name;
  napi_valuetype cb_type = napi_undefined;
  io_pair io;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 3) napi_typeof(env, argv[2], &cb_type);
  if (cb_type != napi_function) {
    napi_throw_type_error(env, NULL, "expected (source Buffer, destination Buffer, callback)");
    return NULL;
  }
  if (!pair_of(env, argc, argv, &io)) return NULL;
  compress_req *r = calloc(1, sizeof *r);
  if (!r) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  r->io = io;
  napi_create_reference(env, argv[0], 1, &r->src);
  napi_create_reference(env, argv[1], 1, &r->dst);
  napi_create_reference(env, argv[2], 1, &r->callback);
  napi_create_string_utf8(env, "offsite.lz4compress", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, compress_execute, compress_complete, r, &r->work);
  napi_queue_async_work(env, r->work);
  return NULL;
}

static napi_value compress_into(napi_env env, napi_callback_info info) {
  io_pair io;
  if (!get_pair(env, info, &io)) return NULL;
  return int_result(env, compress_prefixed(&io));
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
    {"compressIntoAsync", NULL, compress_into_async, NULL, NULL, NULL, napi_enumerable, NULL},
    {"decompressInto", NULL, decompress_into, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, 4, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
