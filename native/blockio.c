/*
 * blockio: the two Linux file calls Node's fs lacks, for thin volumes.
 *   punchHole(fd, offset, length, callback)  fallocate(PUNCH_HOLE|KEEP_SIZE) on the libuv pool
 *   seekData(fd, offset) / seekHole(fd, offset)  lseek(SEEK_DATA / SEEK_HOLE); -1 at end of file
 *   preadNowait(fd, buffer, offset) / pwriteNowait(fd, buffer, offset)
 *       preadv2 / pwritev2 with RWF_NOWAIT: the I/O happens inline only when it needs no disk
 *       wait (page-cache hit, no dirty throttling); returns bytes done, -1 when it would block
 *       (the caller falls back to the thread pool), or -2 when the file system never offers it
 *       (the caller stops asking). Saves a thread-pool round trip per command.
 * Errors carry errno's name in `code`, like Node's own fs errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <node_api.h>
#include <stdint.h>
#include <sys/uio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  int fd;
  int64_t offset;
  int64_t length;
  int err;
  napi_async_work work;
  napi_ref callback;
} punch_req;

static napi_value make_error(napi_env env, int err, const char *syscall) {
  napi_value code, msg, error;
  char text[256];
  const char *name = strerrorname_np(err);
  snprintf(text, sizeof text, "%s: %s", syscall, strerror(err));
  napi_create_string_utf8(env, name ? name : "EIO", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &error);
  return error;
}

static void punch_execute(napi_env env, void *data) {
  (void)env;
  punch_req *r = data;
  r->err = fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r->offset, r->length) == 0 ? 0 : errno;
}

static void punch_complete(napi_env env, napi_status status, void *data) {
  (void)status;
  punch_req *r = data;
  napi_value cb, global, argv[1];
  napi_get_reference_value(env, r->callback, &cb);
  napi_get_global(env, &global);
  if (r->err) argv[0] = make_error(env, r->err, "fallocate");
  else napi_get_null(env, &argv[0]);
  napi_call_function(env, global, cb, 1, argv, NULL);
  napi_delete_reference(env, r->callback);
  napi_delete_async_work(env, r->work);
  free(r);
}

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) {
    napi_throw_type_error(env, NULL, "punchHole(fd, offset, length, callback)");
    return NULL;
  }
  punch_req *r = calloc(1, sizeof *r);
  napi_get_value_int32(env, argv[0], &r->fd);
  napi_get_value_int64(env, argv[1], &r->offset);
  napi_get_value_int64(env, argv[2], &r->length);
  napi_create_reference(env, argv[3], 1, &r->callback);
  napi_create_string_utf8(env, "offsite.punchHole", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, punch_execute, punch_complete, r, &r->work);
  napi_queue_async_work(env, r->work);
  return NULL;
}

static napi_value seek_common(napi_env env, napi_callback_info info, int whence) {
  size_t argc = 2;
  napi_value argv[2], result;
  int fd;
  int64_t offset;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_value_int32(env, argv[0], &fd);
  napi_get_value_int64(env, argv[1], &offset);
  off_t pos = lseek(fd, offset, whence);
  if (pos < 0) {
    if (errno == ENXIO) {
      napi_create_int64(env, -1, &result);
      return result;
    }
    napi_throw(env, make_error(env, errno, "lseek"));
    return NULL;
  }
  napi_create_int64(env, pos, &result);
  return result;
}

static napi_value seek_data(napi_env env, napi_callback_info info) { return seek_common(env, info, SEEK_DATA); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return seek_common(env, info, SEEK_HOLE); }

static napi_value rw_nowait(napi_env env, napi_callback_info info, int write) {
  size_t argc = 3;
  napi_value argv[3], result;
  int fd;
  int64_t offset;
  void *data;
  size_t length;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_value_int32(env, argv[0], &fd);
  if (napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected a Buffer");
    return NULL;
  }
  napi_get_value_int64(env, argv[2], &offset);
  struct iovec iov = {data, length};
  ssize_t n = write ? pwritev2(fd, &iov, 1, offset, RWF_NOWAIT) : preadv2(fd, &iov, 1, offset, RWF_NOWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EOPNOTSUPP || errno == ENOSYS) {
      napi_create_int64(env, errno == EAGAIN ? -1 : -2, &result);
      return result;
    }
    napi_throw(env, make_error(env, errno, write ? "pwritev2" : "preadv2"));
    return NULL;
  }
  napi_create_int64(env, n, &result);
  return result;
}

static napi_value pread_nowait(napi_env env, napi_callback_info info) { return rw_nowait(env, info, 0); }
static napi_value pwrite_nowait(napi_env env, napi_callback_info info) { return rw_nowait(env, info, 1); }

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"preadNowait", NULL, pread_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
    {"pwriteNowait", NULL, pwrite_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, 5, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
