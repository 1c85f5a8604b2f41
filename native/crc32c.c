/*
 * crc32c: CRC-32C (Castagnoli, the iSCSI digest) over a buffer, from Intel's ISA-L
 * (crc32_iscsi: SSE4.2/PCLMUL/AVX-512 folding, ~50 GB/s here against ~6 GB/s for the portable
 * package). Linked against the system's libisal (Debian: libisal-dev to build, libisal2 to run);
 * a separate addon from blockio so that a machine without the library only loses speed.
 *   crc32c(buffer, initial = 0) -> uint32, chainable: crc32c(b, crc32c(a)) == crc32c(a ++ b)
 */
#include <isa-l/crc.h>
#include <node_api.h>
#include <stdint.h>

static napi_value crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  void *data;
  size_t length;
  uint32_t initial = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_buffer_info(env, argv[0], &data, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "crc32c(buffer, initial?)");
    return NULL;
  }
  if (argc > 1) napi_get_value_uint32(env, argv[1], &initial);
  // ISA-L keeps the register un-inverted: invert in and out for the standard, chainable value.
  uint32_t crc = ~crc32_iscsi((unsigned char *)data, (int)length, ~initial);
  napi_create_uint32(env, crc, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"crc32c", NULL, crc32c, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, 1, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
