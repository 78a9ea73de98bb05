/*
 * A fake libnvidia-ml.so.1 for the testbed: the NVML functions pynvml 13 calls, answered from
 * a JSON profile instead of a GPU. Built on demand by orchestrator/testbed/fakelibs.py with
 * `cc -shared -fPIC -fvisibility=hidden`, so only the NVML entry points below are exported.
 *
 * The profile is the file named by $FAKE_NVML_PROFILE. It is re-read at every nvmlInit*, so a
 * profile rewritten while a host runs (a simulated driver upgrade) is seen by the next process
 * that initialises NVML. Schema (one JSON object; any other key is ignored):
 *
 *   {"init_error": 0,                      NVML return code of nvmlInit* (9 = driver not loaded,
 *                                          18 = driver/library version mismatch)
 *    "driver_version": "550.54.15",        nvmlSystemGetDriverVersion
 *    "nvml_version": "12.550.54.15",       nvmlSystemGetNVMLVersion
 *    "cuda_driver_version": 12040,         nvmlSystemGetCudaDriverVersion(_v2), 1000*major+10*minor
 *    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...",
 *              "memory_total": 85899345920, "memory_used": 0, "memory_reserved": 0,
 *              "cc_major": 9, "cc_minor": 0, "architecture": 9,
 *              health (each optional; the default is a healthy GPU, see HEALTH below):
 *              "ecc_mode", "ecc_{volatile,aggregate}_{corrected,uncorrected}",
 *              "retired_{sbe,dbe,pending}" (pre-Ampere only: from compute capability 8.0 on
 *              NVML answers Not Supported, as real A100/H100 do), "remap_{correctable,
 *              uncorrectable,pending,failure}" (Ampere on; Not Supported before),
 *              "throttle_reasons" (nvmlClocksEventReasons bits), "temperature", "slowdown_temp",
 *              "power_mw", "power_limit_mw", "persistence", "mig_mode",
 *              "pcie_gen", "pcie_max_gen", "pcie_width", "pcie_max_width", "pci_bus" (default
 *              0x3b + index),
 *              "processes": [{"pid": 4242, "used_memory": bytes}] (at most 8),
 *              "mig_instances": [{"uuid": "MIG-...", "profile": "1g.10gb", "memory_total": bytes,
 *                                 "memory_used": bytes, "gi": 1, "ci": 0}] (MIG devices, at
 *              most 7 a GPU; with "mig_mode": 1 they answer nvmlDeviceGetMigDeviceHandleByIndex
 *              and nvmlDeviceGetHandleByUUID, their name is "<GPU name> MIG <profile>" as
 *              NVIDIA's driver names them, and name, UUID and memory queries work on them)}]}
 *
 * $FAKE_NVML_PROFILE unset: nvmlInit returns 9 (no driver configured). Unreadable or malformed
 * profile: nvmlInit returns 999 (Unknown Error). At most 16 GPUs.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_NOT_FOUND = 6, NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9, NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999
};

#define MAX_GPUS 16
#define MAX_PROFILE_BYTES (1 << 20)
#define MAX_DEPTH 32
#define NVML_MEMORY_V2 0x02000028u

/* The health counters of one GPU: profile key -> default (a healthy data-center GPU). */
enum {
    H_ECC_MODE, H_ECC_VOL_CORR, H_ECC_VOL_UNCORR, H_ECC_AGG_CORR, H_ECC_AGG_UNCORR,
    H_RETIRED_SBE, H_RETIRED_DBE, H_RETIRED_PENDING,
    H_REMAP_CORR, H_REMAP_UNCORR, H_REMAP_PENDING, H_REMAP_FAILURE,
    H_THROTTLE, H_TEMPERATURE, H_SLOWDOWN_TEMP, H_POWER_MW, H_POWER_LIMIT_MW, H_PERSISTENCE,
    H_MIG_MODE, H_PCIE_GEN, H_PCIE_MAX_GEN, H_PCIE_WIDTH, H_PCIE_MAX_WIDTH,
    H_PCI_BUS, H_COUNT
};
static const struct { const char *key; long long fallback; } HEALTH[H_COUNT] = {
    {"ecc_mode", 1}, {"ecc_volatile_corrected", 0}, {"ecc_volatile_uncorrected", 0},
    {"ecc_aggregate_corrected", 0}, {"ecc_aggregate_uncorrected", 0},
    {"retired_sbe", 0}, {"retired_dbe", 0}, {"retired_pending", 0},
    {"remap_correctable", 0}, {"remap_uncorrectable", 0}, {"remap_pending", 0},
    {"remap_failure", 0},
    {"throttle_reasons", 0}, {"temperature", 34}, {"slowdown_temp", 90}, {"power_mw", 61000},
    {"power_limit_mw", 350000}, {"persistence", 1}, {"mig_mode", 0},
    {"pcie_gen", 4}, {"pcie_max_gen", 4}, {"pcie_width", 16}, {"pcie_max_width", 16},
    {"pci_bus", -1},
};

#define MAX_PROCESSES 8
typedef struct { long long pid; unsigned long long used_memory; } fake_process;

#define MAX_MIG_PER_GPU 7
#define MAX_MIGS (MAX_GPUS * MAX_MIG_PER_GPU)

typedef struct fake_gpu {
    char name[128];
    char uuid[96];
    char mig_profile[32];          /* a MIG device: its profile; "" for a GPU */
    int parent;                    /* a MIG device: its GPU's index; -1 for a GPU */
    long long gi, ci;              /* a MIG device: GPU and compute instance ids */
    unsigned int mig_first, mig_count;  /* a GPU: its MIG devices in profile.migs */
    unsigned long long memory_total, memory_used, memory_reserved;
    long long cc_major, cc_minor, architecture;
    long long health[H_COUNT];
    unsigned int process_count;
    fake_process processes[MAX_PROCESSES];
} fake_gpu;
typedef fake_gpu *nvmlDevice_t;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

typedef struct profile {
    long long init_error;
    char driver_version[80];
    char nvml_version[80];
    long long cuda_driver_version;
    unsigned int gpu_count;
    fake_gpu gpus[MAX_GPUS];
    unsigned int mig_total;
    fake_gpu migs[MAX_MIGS];
} profile;

static profile P;
static profile *parsing; /* the profile being read: MIG devices are appended to its migs */
static int refcount;

/* ---- a small JSON reader: just enough for the schema above, skips everything else ---- */

typedef struct { const char *s; int ok; } reader;

static void ws(reader *r) {
    while (*r->s == ' ' || *r->s == '\t' || *r->s == '\n' || *r->s == '\r') r->s++;
}

static int expect(reader *r, char c) {
    ws(r);
    if (*r->s != c) return r->ok = 0;
    r->s++;
    return 1;
}

/* Reads a string into out (truncated to cap-1 bytes; out may be NULL to skip it). */
static int read_string(reader *r, char *out, size_t cap) {
    size_t n = 0;
    if (!expect(r, '"')) return 0;
    while (*r->s && *r->s != '"') {
        char c = *r->s++;
        if (c == '\\') {
            char e = *r->s++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': /* non-ASCII escapes are not needed by any profile: keep a placeholder */
                for (int i = 0; i < 4; i++) if (*r->s) r->s++;
                c = '?';
                break;
            case '"': case '\\': case '/': c = e; break;
            default: return r->ok = 0;
            }
        }
        if (out && n + 1 < cap) out[n++] = c;
    }
    if (out && cap) out[n] = '\0';
    if (*r->s != '"') return r->ok = 0;
    r->s++;
    return 1;
}

static int read_int(reader *r, long long *out) {
    char *end;
    ws(r);
    long long v = strtoll(r->s, &end, 10);
    if (end == r->s) return r->ok = 0;
    r->s = end;
    /* A fraction or exponent is not part of the schema: refuse rather than misread it. */
    if (*r->s == '.' || *r->s == 'e' || *r->s == 'E') return r->ok = 0;
    if (out) *out = v;
    return 1;
}

static int read_uint64(reader *r, unsigned long long *out) {
    long long v;
    if (!read_int(r, &v) || v < 0) return r->ok = 0;
    *out = (unsigned long long)v;
    return 1;
}

static int skip_value(reader *r, int depth);

/* Calls on_item(r, ctx, key) for each member (key != NULL) or element (key == NULL). */
typedef int (*item_fn)(reader *r, void *ctx, const char *key);

static int read_container(reader *r, char open, char close, item_fn on_item, void *ctx) {
    char key[64];
    if (!expect(r, open)) return 0;
    ws(r);
    if (*r->s == close) { r->s++; return 1; }
    for (;;) {
        if (open == '{') {
            if (!read_string(r, key, sizeof key) || !expect(r, ':')) return 0;
        }
        if (!on_item(r, ctx, open == '{' ? key : NULL)) return r->ok = 0;
        ws(r);
        if (*r->s == ',') { r->s++; continue; }
        return expect(r, close);
    }
}

static int skip_item(reader *r, void *ctx, const char *key) {
    (void)key;
    return skip_value(r, *(int *)ctx);
}

static int skip_value(reader *r, int depth) {
    int inner = depth + 1;
    ws(r);
    if (depth > MAX_DEPTH) return r->ok = 0;
    switch (*r->s) {
    case '"': return read_string(r, NULL, 0);
    case '{': return read_container(r, '{', '}', skip_item, &inner);
    case '[': return read_container(r, '[', ']', skip_item, &inner);
    case 't': if (!strncmp(r->s, "true", 4)) { r->s += 4; return 1; } return r->ok = 0;
    case 'f': if (!strncmp(r->s, "false", 5)) { r->s += 5; return 1; } return r->ok = 0;
    case 'n': if (!strncmp(r->s, "null", 4)) { r->s += 4; return 1; } return r->ok = 0;
    default: {
        char *end;
        strtod(r->s, &end);
        if (end == r->s) return r->ok = 0;
        r->s = end;
        return 1;
    }
    }
}

static int process_member(reader *r, void *ctx, const char *key) {
    fake_process *p = ctx;
    if (!strcmp(key, "pid")) return read_int(r, &p->pid);
    if (!strcmp(key, "used_memory")) return read_uint64(r, &p->used_memory);
    return skip_value(r, 3);
}

static int process_element(reader *r, void *ctx, const char *key) {
    fake_gpu *g = ctx;
    (void)key;
    if (g->process_count >= MAX_PROCESSES) return r->ok = 0;
    fake_process *p = &g->processes[g->process_count++];
    memset(p, 0, sizeof *p);
    return read_container(r, '{', '}', process_member, p);
}

static int mig_member(reader *r, void *ctx, const char *key) {
    fake_gpu *m = ctx;
    if (!strcmp(key, "uuid")) return read_string(r, m->uuid, sizeof m->uuid);
    if (!strcmp(key, "profile")) return read_string(r, m->mig_profile, sizeof m->mig_profile);
    if (!strcmp(key, "memory_total")) return read_uint64(r, &m->memory_total);
    if (!strcmp(key, "memory_used")) return read_uint64(r, &m->memory_used);
    if (!strcmp(key, "gi")) return read_int(r, &m->gi);
    if (!strcmp(key, "ci")) return read_int(r, &m->ci);
    return skip_value(r, 4);
}

static int mig_element(reader *r, void *ctx, const char *key) {
    fake_gpu *g = ctx;
    (void)key;
    if (g->mig_count >= MAX_MIG_PER_GPU || parsing->mig_total >= MAX_MIGS) return r->ok = 0;
    if (g->mig_count == 0) g->mig_first = parsing->mig_total;
    /* A GPU's MIG devices must be contiguous in migs: one list per GPU, read in one go. */
    if (g->mig_first + g->mig_count != parsing->mig_total) return r->ok = 0;
    fake_gpu *m = &parsing->migs[parsing->mig_total++];
    memset(m, 0, sizeof *m);
    m->parent = (int)(g - parsing->gpus);
    g->mig_count++;
    return read_container(r, '{', '}', mig_member, m);
}

static int gpu_member(reader *r, void *ctx, const char *key) {
    fake_gpu *g = ctx;
    if (!strcmp(key, "name")) return read_string(r, g->name, sizeof g->name);
    if (!strcmp(key, "uuid")) return read_string(r, g->uuid, sizeof g->uuid);
    if (!strcmp(key, "memory_total")) return read_uint64(r, &g->memory_total);
    if (!strcmp(key, "memory_used")) return read_uint64(r, &g->memory_used);
    if (!strcmp(key, "memory_reserved")) return read_uint64(r, &g->memory_reserved);
    if (!strcmp(key, "cc_major")) return read_int(r, &g->cc_major);
    if (!strcmp(key, "cc_minor")) return read_int(r, &g->cc_minor);
    if (!strcmp(key, "architecture")) return read_int(r, &g->architecture);
    if (!strcmp(key, "processes")) return read_container(r, '[', ']', process_element, g);
    if (!strcmp(key, "mig_instances")) return read_container(r, '[', ']', mig_element, g);
    for (int i = 0; i < H_COUNT; i++)
        if (!strcmp(key, HEALTH[i].key)) return read_int(r, &g->health[i]);
    return skip_value(r, 2);
}

static int gpu_element(reader *r, void *ctx, const char *key) {
    profile *p = ctx;
    (void)key;
    if (p->gpu_count >= MAX_GPUS) return r->ok = 0;
    fake_gpu *g = &p->gpus[p->gpu_count++];
    memset(g, 0, sizeof *g);
    g->parent = -1;
    g->architecture = 0xffffffffLL; /* NVML_DEVICE_ARCH_UNKNOWN */
    for (int i = 0; i < H_COUNT; i++) g->health[i] = HEALTH[i].fallback;
    if (g->health[H_PCI_BUS] < 0) g->health[H_PCI_BUS] = 0x3b + (long long)(p->gpu_count - 1);
    return read_container(r, '{', '}', gpu_member, g);
}

static int profile_member(reader *r, void *ctx, const char *key) {
    profile *p = ctx;
    if (!strcmp(key, "init_error")) return read_int(r, &p->init_error);
    if (!strcmp(key, "driver_version")) return read_string(r, p->driver_version, 80);
    if (!strcmp(key, "nvml_version")) return read_string(r, p->nvml_version, 80);
    if (!strcmp(key, "cuda_driver_version")) return read_int(r, &p->cuda_driver_version);
    if (!strcmp(key, "gpus")) return read_container(r, '[', ']', gpu_element, p);
    return skip_value(r, 1);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(MAX_PROFILE_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_PROFILE_BYTES + 1, f) : 0;
    fclose(f);
    if (!buf || n > MAX_PROFILE_BYTES) { free(buf); return NULL; }
    buf[n] = '\0';
    return buf;
}

/* Returns the NVML code nvmlInit must return; on success P holds the profile. */
static nvmlReturn_t load_profile(void) {
    const char *path = getenv("FAKE_NVML_PROFILE");
    if (!path || !*path) return NVML_ERROR_DRIVER_NOT_LOADED;
    char *text = slurp(path);
    if (!text) return NVML_ERROR_UNKNOWN;
    static profile fresh; /* static: with its MIG devices it is too big for a thread's stack */
    memset(&fresh, 0, sizeof fresh);
    parsing = &fresh;
    reader r = {text, 1};
    int ok = read_container(&r, '{', '}', profile_member, &fresh) && r.ok;
    ws(&r);
    ok = ok && *r.s == '\0';
    free(text);
    if (!ok) return NVML_ERROR_UNKNOWN;
    /* A MIG device is its GPU's architecture, named as the driver names it. */
    for (unsigned int i = 0; i < fresh.mig_total; i++) {
        fake_gpu *m = &fresh.migs[i];
        const fake_gpu *g = &fresh.gpus[m->parent];
        snprintf(m->name, sizeof m->name, "%s MIG %s", g->name, m->mig_profile);
        m->cc_major = g->cc_major;
        m->cc_minor = g->cc_minor;
        m->architecture = g->architecture;
        for (int h = 0; h < H_COUNT; h++) m->health[h] = g->health[h];
    }
    P = fresh;
    return (nvmlReturn_t)P.init_error;
}

/* ---- NVML API ---- */

API nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    nvmlReturn_t rc = load_profile();
    if (rc == NVML_SUCCESS) refcount++;
    return rc;
}
API nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
API nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

API nvmlReturn_t nvmlShutdown(void) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    refcount--;
    return NVML_SUCCESS;
}

API const char *nvmlErrorString(nvmlReturn_t result) {
    /* The strings of NVIDIA's libnvidia-ml (what nvidia-smi prints after "Failed to initialize NVML: "). */
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "Driver/library version mismatch";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 25: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_string(const char *value, char *out, unsigned int length) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, value);
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy_string(P.driver_version, version, length);
}
API nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    return copy_string(P.nvml_version, version, length);
}

API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    *version = (int)P.cuda_driver_version;
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}

API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = P.gpu_count;
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= P.gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &P.gpus[index];
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < P.gpu_count; i++) {
        if (!strcmp(P.gpus[i].uuid, uuid)) { *device = &P.gpus[i]; return NVML_SUCCESS; }
    }
    for (unsigned int i = 0; i < P.mig_total; i++) {  /* a MIG device, in MIG mode only */
        const fake_gpu *m = &P.migs[i];
        if (P.gpus[m->parent].health[H_MIG_MODE] && !strcmp(m->uuid, uuid)) {
            *device = &P.migs[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

static int is_mig(nvmlDevice_t d) { return d >= &P.migs[0] && d < &P.migs[P.mig_total]; }

/* A handle is valid only if it points at one of this profile's GPUs or MIG devices. */
static nvmlReturn_t check(nvmlDevice_t d, const void *out) {
    if (refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (!out || ((d < &P.gpus[0] || d >= &P.gpus[P.gpu_count]) && !is_mig(d)))
        return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) {
    nvmlReturn_t rc = check(d, index);
    if (rc == NVML_SUCCESS && is_mig(d)) return NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS) *index = (unsigned int)(d - &P.gpus[0]);
    return rc;
}

API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    nvmlReturn_t rc = check(d, name);
    return rc ? rc : copy_string(d->name, name, length);
}

API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    nvmlReturn_t rc = check(d, uuid);
    return rc ? rc : copy_string(d->uuid, uuid, length);
}

static unsigned long long memory_free(const fake_gpu *g) {
    unsigned long long taken = g->memory_used + g->memory_reserved;
    return taken > g->memory_total ? 0 : g->memory_total - taken;
}

API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *memory) {
    nvmlReturn_t rc = check(d, memory);
    if (rc) return rc;
    memory->total = d->memory_total;
    memory->free = memory_free(d);
    memory->used = d->memory_used + d->memory_reserved;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *memory) {
    nvmlReturn_t rc = check(d, memory);
    if (rc) return rc;
    if (memory->version != NVML_MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = d->memory_total;
    memory->reserved = d->memory_reserved;
    memory->free = memory_free(d);
    memory->used = d->memory_used;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    nvmlReturn_t rc = check(d, major);
    if (rc || !minor) return rc ? rc : NVML_ERROR_INVALID_ARGUMENT;
    *major = (int)d->cc_major;
    *minor = (int)d->cc_minor;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t d, unsigned int *arch) {
    nvmlReturn_t rc = check(d, arch);
    if (rc == NVML_SUCCESS) *arch = (unsigned int)d->architecture;
    return rc;
}

/* The profile's processes, with NVML's two-call protocol: a too-small buffer gets the count and
 * NVML_ERROR_INSUFFICIENT_SIZE; none running is success with count 0. */
typedef struct { unsigned int pid; unsigned long long used; unsigned int gi, ci; } nvml_process;
static nvmlReturn_t processes(nvmlDevice_t d, unsigned int *count, nvml_process *infos) {
    nvmlReturn_t rc = check(d, count);
    if (rc) return rc;
    unsigned int have = d->process_count, room = *count;
    *count = have;
    if (have == 0) return NVML_SUCCESS;
    if (!infos || room < have) return NVML_ERROR_INSUFFICIENT_SIZE;
    for (unsigned int i = 0; i < have; i++) {
        infos[i].pid = (unsigned int)d->processes[i].pid;
        infos[i].used = d->processes[i].used_memory;
        infos[i].gi = infos[i].ci = 0xffffffffu;
    }
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c,
                                                         nvml_process *i) {
    return processes(d, c, i);
}
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c,
                                                         nvml_process *i) {
    return processes(d, c, i);
}
/* A compute-only fake: no graphics processes. */
API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, void *i) {
    (void)i;
    nvmlReturn_t rc = check(d, c);
    if (rc == NVML_SUCCESS) *c = 0;
    return rc;
}

API nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t d, int *mode) {
    nvmlReturn_t rc = check(d, mode);
    if (rc == NVML_SUCCESS) *mode = 0; /* NVML_COMPUTEMODE_DEFAULT */
    return rc;
}

API nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t d, int *mode) {
    nvmlReturn_t rc = check(d, mode);
    if (rc == NVML_SUCCESS) *mode = (int)d->health[H_PERSISTENCE];
    return rc;
}

API nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending) {
    nvmlReturn_t rc = check(d, current);
    if (rc || !pending) return rc ? rc : NVML_ERROR_INVALID_ARGUMENT;
    /* MIG exists from Ampere (compute capability 8.0) on; older GPUs answer Not Supported. */
    if (d->cc_major < 8 || is_mig(d)) return NVML_ERROR_NOT_SUPPORTED;
    *current = *pending = (unsigned int)d->health[H_MIG_MODE];
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp) {
    nvmlReturn_t rc = check(d, temp);
    if (rc == NVML_SUCCESS) *temp = sensor == 0 ? (unsigned int)d->health[H_TEMPERATURE] : 0;
    return rc;
}

API nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *milliwatts) {
    nvmlReturn_t rc = check(d, milliwatts);
    if (rc == NVML_SUCCESS) *milliwatts = (unsigned int)d->health[H_POWER_MW];
    return rc;
}

API nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *util) {
    nvmlReturn_t rc = check(d, util);
    if (rc == NVML_SUCCESS) util->gpu = util->memory = 0;
    return rc;
}

API nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t d, int *current, int *pending) {
    nvmlReturn_t rc = check(d, current);
    if (rc || !pending) return rc ? rc : NVML_ERROR_INVALID_ARGUMENT;
    *current = *pending = (int)d->health[H_ECC_MODE];
    return NVML_SUCCESS;
}

/* ---- health: ECC, retirement and remapping, throttling, power, PCIe, MIG ---- */

static nvmlReturn_t health_value(nvmlDevice_t d, const void *out, int field,
                                 unsigned long long *value) {
    nvmlReturn_t rc = check(d, out);
    if (rc == NVML_SUCCESS) *value = (unsigned long long)d->health[field];
    return rc;
}

static nvmlReturn_t put_uint(nvmlDevice_t d, unsigned int *out, int field) {
    unsigned long long v = 0;
    nvmlReturn_t rc = health_value(d, out, field, &v);
    if (rc == NVML_SUCCESS) *out = (unsigned int)v;
    return rc;
}

/* errorType 0 corrected, 1 uncorrected; counterType 0 volatile (since reset), 1 aggregate. */
API nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int error_type, int counter_type,
                                             unsigned long long *count) {
    if (error_type < 0 || error_type > 1 || counter_type < 0 || counter_type > 1)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (check(d, count) == NVML_SUCCESS && !d->health[H_ECC_MODE]) return NVML_ERROR_NOT_SUPPORTED;
    static const int FIELD[2][2] = {{H_ECC_VOL_CORR, H_ECC_AGG_CORR},
                                    {H_ECC_VOL_UNCORR, H_ECC_AGG_UNCORR}};
    return health_value(d, count, FIELD[error_type][counter_type], count);
}

/* Page retirement exists before Ampere; from compute capability 8.0 on it is row remapping. */
API nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t d, int cause, unsigned int *count,
                                           unsigned long long *addresses) {
    nvmlReturn_t rc = check(d, count);
    if (rc) return rc;
    if (d->cc_major >= 8) return NVML_ERROR_NOT_SUPPORTED;
    if (cause < 0 || cause > 1) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int have = (unsigned int)d->health[cause ? H_RETIRED_DBE : H_RETIRED_SBE];
    unsigned int room = *count;
    *count = have;
    if (have == 0) return NVML_SUCCESS;
    if (!addresses || room < have) return NVML_ERROR_INSUFFICIENT_SIZE;
    for (unsigned int i = 0; i < have; i++) addresses[i] = 0x1000ull * (i + 1);
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t d, int *pending) {
    nvmlReturn_t rc = check(d, pending);
    if (rc) return rc;
    if (d->cc_major >= 8) return NVML_ERROR_NOT_SUPPORTED;
    *pending = (int)d->health[H_RETIRED_PENDING];
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t d, unsigned int *corr, unsigned int *unc,
                                           unsigned int *pending, unsigned int *failure) {
    nvmlReturn_t rc = check(d, corr);
    if (rc || !unc || !pending || !failure) return rc ? rc : NVML_ERROR_INVALID_ARGUMENT;
    if (d->cc_major < 8) return NVML_ERROR_NOT_SUPPORTED;
    *corr = (unsigned int)d->health[H_REMAP_CORR];
    *unc = (unsigned int)d->health[H_REMAP_UNCORR];
    *pending = (unsigned int)d->health[H_REMAP_PENDING];
    *failure = (unsigned int)d->health[H_REMAP_FAILURE];
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t d,
                                                        unsigned long long *reasons) {
    return health_value(d, reasons, H_THROTTLE, reasons);
}
API nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d,
                                                           unsigned long long *reasons) {
    return health_value(d, reasons, H_THROTTLE, reasons);
}

/* threshold 1 = NVML_TEMPERATURE_THRESHOLD_SLOWDOWN; the others are not faked. */
API nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t d, int threshold,
                                                   unsigned int *temp) {
    nvmlReturn_t rc = check(d, temp);
    if (rc) return rc;
    if (threshold != 1) return NVML_ERROR_NOT_SUPPORTED;
    return put_uint(d, temp, H_SLOWDOWN_TEMP);
}

API nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *milliwatts) {
    return put_uint(d, milliwatts, H_POWER_LIMIT_MW);
}
API nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t d, unsigned int *milliwatts) {
    return put_uint(d, milliwatts, H_POWER_LIMIT_MW);
}

API nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t d, unsigned int *gen) {
    return put_uint(d, gen, H_PCIE_GEN);
}
API nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t d, unsigned int *gen) {
    return put_uint(d, gen, H_PCIE_MAX_GEN);
}
API nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t d, unsigned int *width) {
    return put_uint(d, width, H_PCIE_WIDTH);
}
API nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t d, unsigned int *width) {
    return put_uint(d, width, H_PCIE_MAX_WIDTH);
}

/* nvmlPciInfo_t: busIdLegacy[16], domain, bus, device, pciDeviceId, pciSubSystemId, busId[32]. */
typedef struct {
    char bus_id_legacy[16];
    unsigned int domain, bus, device, pci_device_id, pci_subsystem_id;
    char bus_id[32];
} nvml_pci_info;
API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvml_pci_info *pci) {
    nvmlReturn_t rc = check(d, pci);
    if (rc) return rc;
    memset(pci, 0, sizeof *pci);
    pci->bus = (unsigned int)d->health[H_PCI_BUS] & 0xffu;
    snprintf(pci->bus_id, sizeof pci->bus_id, "00000000:%02X:00.0", pci->bus);
    snprintf(pci->bus_id_legacy, sizeof pci->bus_id_legacy, "0000:%02X:00.0", pci->bus);
    pci->pci_device_id = 0x233010deu;
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvml_pci_info *pci) {
    return nvmlDeviceGetPciInfo_v3(d, pci);
}

API nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned int *count) {
    nvmlReturn_t rc = check(d, count);
    if (rc) return rc;
    if (d->cc_major < 8) return NVML_ERROR_NOT_SUPPORTED;
    *count = 7;
    return NVML_SUCCESS;
}

/* The GPU's MIG devices, by slot; an empty slot is Not Found, as on a real GPU. */
API nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned int index,
                                                     nvmlDevice_t *mig) {
    nvmlReturn_t rc = check(d, mig);
    if (rc) return rc;
    if (d->cc_major < 8 || is_mig(d) || !d->health[H_MIG_MODE]) return NVML_ERROR_NOT_SUPPORTED;
    if (index >= d->mig_count) return NVML_ERROR_NOT_FOUND;
    *mig = &P.migs[d->mig_first + index];
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t d, unsigned int *mig) {
    nvmlReturn_t rc = check(d, mig);
    if (rc == NVML_SUCCESS) *mig = (unsigned int)is_mig(d);
    return rc;
}

API nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t d, nvmlDevice_t *gpu) {
    nvmlReturn_t rc = check(d, gpu);
    if (rc) return rc;
    if (!is_mig(d)) return NVML_ERROR_INVALID_ARGUMENT;
    *gpu = &P.gpus[d->parent];
    return NVML_SUCCESS;
}

/* which: 0 the GPU instance id, 1 the compute instance id (read only once d is checked). */
static nvmlReturn_t instance_id(nvmlDevice_t d, unsigned int *id, int which) {
    nvmlReturn_t rc = check(d, id);
    if (rc) return rc;
    if (!is_mig(d)) return NVML_ERROR_NOT_SUPPORTED;
    *id = (unsigned int)(which ? d->ci : d->gi);
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t d, unsigned int *id) {
    return instance_id(d, id, 0);
}
API nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t d, unsigned int *id) {
    return instance_id(d, id, 1);
}
