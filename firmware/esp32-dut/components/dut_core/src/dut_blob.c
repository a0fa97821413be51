/* Named byte buffers uploaded in chunks (docs/dut-protocol.md §5.2). Only the console task touches them. */
#include <stdlib.h>
#include <string.h>

#include "dut_internal.h"

static dut_blob_t s_blobs[DUT_MAX_BLOBS];

static dut_blob_t *find(const char *name)
{
    for (int i = 0; i < DUT_MAX_BLOBS; i++) {
        if (s_blobs[i].used && strcmp(s_blobs[i].name, name) == 0) {
            return &s_blobs[i];
        }
    }
    return NULL;
}

static void drop(dut_blob_t *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

void dut_blobs_reset(void)
{
    for (int i = 0; i < DUT_MAX_BLOBS; i++) {
        drop(&s_blobs[i]);
    }
}

int dut_blob_begin(const char *name, size_t size, size_t max_size, const char **why)
{
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen >= DUT_BLOB_NAME_MAX) {
        *why = "name must be 1 to 31 bytes";
        return DUT_BLOB_ERR_ARGS;
    }
    if (size > max_size) {
        *why = "size is larger than this device's blob limit";
        return DUT_BLOB_ERR_NOMEM;
    }
    dut_blob_t *b = find(name);
    if (b) {
        drop(b); /* BEGIN replaces a blob of that name */
    }
    for (int i = 0; i < DUT_MAX_BLOBS && !b; i++) {
        if (!s_blobs[i].used) {
            b = &s_blobs[i];
        }
    }
    if (!b) {
        *why = "all blob slots are in use (BLOB_FREE one)";
        return DUT_BLOB_ERR_NOMEM;
    }
    b->data = malloc(size + 1);
    if (!b->data) {
        *why = "not enough heap for the blob";
        return DUT_BLOB_ERR_NOMEM;
    }
    b->data[size] = 0;
    memcpy(b->name, name, nlen + 1);
    b->size = size;
    b->used = true;
    return DUT_BLOB_OK;
}

int dut_blob_chunk(const char *name, size_t offset, const uint8_t *data, size_t n, size_t *received, const char **why)
{
    dut_blob_t *b = find(name);
    if (!b) {
        *why = "no such blob (BLOB_BEGIN first)";
        return DUT_BLOB_ERR_NOBLOB;
    }
    if (b->complete) {
        *why = "blob already ended";
        return DUT_BLOB_ERR_ARGS;
    }
    if (offset != b->received) {
        *why = "chunks must come in order: offset is not the number of bytes received so far";
        return DUT_BLOB_ERR_ARGS;
    }
    if (n > b->size - b->received) {
        *why = "chunk goes past the announced size";
        return DUT_BLOB_ERR_ARGS;
    }
    if (n) {
        memcpy(b->data + b->received, data, n);
    }
    b->received += n;
    *received = b->received;
    return DUT_BLOB_OK;
}

int dut_blob_end(const char *name, uint32_t crc, size_t *size, const char **why)
{
    dut_blob_t *b = find(name);
    if (!b) {
        *why = "no such blob";
        return DUT_BLOB_ERR_NOBLOB;
    }
    *size = b->received;
    if (b->received != b->size) {
        *why = "size differs: fewer bytes arrived than BLOB_BEGIN announced";
        return DUT_BLOB_ERR_CRC;
    }
    if (dut_crc32(0, b->data, b->size) != crc) {
        *why = "CRC-32 of the received bytes differs";
        return DUT_BLOB_ERR_CRC;
    }
    b->complete = true;
    return DUT_BLOB_OK;
}

int dut_blob_free(const char *name)
{
    dut_blob_t *b = find(name);
    if (!b) {
        return DUT_BLOB_ERR_NOBLOB;
    }
    drop(b);
    return DUT_BLOB_OK;
}

const dut_blob_t *dut_blob_get(const char *name)
{
    dut_blob_t *b = find(name);
    return (b && b->complete) ? b : NULL;
}
