// The cache file format: SHA-256, canonical manifests, entry encoding, the golden file,
// and that no truncation or bit flip goes unnoticed.
#include <gtest/gtest.h>

#include <cstdlib>

#include "cache/format.hpp"
#include "cache/sha256.hpp"
#include "tests/cache/cache_test_util.hpp"

namespace spattn {
namespace {

using namespace spattn::cache;
using test::fake_kernel;
using test::fake_manifest;

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string long_text(1000000, 'a');
  EXPECT_EQ(sha256_hex(long_text), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, StreamingMatchesOneShot) {
  const std::string text = "The quick brown fox jumps over the lazy dog";
  Sha256 hash;
  for (char c : text) hash.update(std::string_view(&c, 1));
  EXPECT_EQ(to_hex(hash.finish()), sha256_hex(text));
}

TEST(Manifest, CanonicalTextIsSortedAndVersioned) {
  const KernelManifest m = fake_manifest("k");
  const std::string text = m.canonical();
  EXPECT_LT(text.find("\"arch\""), text.find("\"format\""));
  EXPECT_LT(text.find("\"format\""), text.find("\"kernel_name\""));
  EXPECT_NE(text.find("\"format\":" + std::to_string(kFormatVersion)), std::string::npos);
  EXPECT_EQ(m.key(), sha256_hex(text));
  EXPECT_EQ(m.key().size(), 64u);
}

TEST(Manifest, TemplateHashOrderDoesNotMatterButOptionOrderDoes) {
  KernelManifest a = fake_manifest("k");
  KernelManifest b = a;
  std::swap(b.template_hashes[0], b.template_hashes[1]);
  EXPECT_EQ(a.key(), b.key());
  KernelManifest c = a;
  std::swap(c.options[1], c.options[2]);
  EXPECT_NE(a.key(), c.key());
}

TEST(Manifest, EveryFieldChangesTheKey) {
  const KernelManifest base = fake_manifest("k");
  const std::string key = base.key();
  std::vector<std::function<void(KernelManifest&)>> edits = {
      [](KernelManifest& m) { m.source += " "; },
      [](KernelManifest& m) { m.template_hashes[0].second[0] = 'c'; },
      [](KernelManifest& m) { m.options.push_back("-lineinfo"); },
      [](KernelManifest& m) { m.arch = "sm_90"; },
      [](KernelManifest& m) { m.nvrtc_version = "99.9"; },
      [](KernelManifest& m) { m.spattn_version = "99.9.9"; },
      [](KernelManifest& m) { m.kernel_name = "other"; },
  };
  for (std::size_t i = 0; i < edits.size(); ++i) {
    KernelManifest m = base;
    edits[i](m);
    EXPECT_NE(m.key(), key) << "edit " << i;
  }
  EXPECT_NE(canonical_manifest(base, kFormatVersion + 1), base.canonical());
}

TEST(Manifest, NonUtf8SourceIsAnError) {
  KernelManifest m = fake_manifest("k");
  m.source = std::string("\xff\xfe", 2);
  try {
    (void)m.key();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
}

TEST(EntryFormat, RoundTrip) {
  const std::string manifest = fake_manifest("k").canonical();
  CompiledKernel k = fake_kernel(5000, 1);
  k.log = "warning: \xff invalid utf-8 in a log is replaced, not fatal";
  const std::string bytes = encode_entry(manifest, k, 42);
  EXPECT_EQ(bytes.compare(0, 8, kEntryMagic), 0);
  const DecodedEntry d = decode_entry(bytes);
  ASSERT_TRUE(d.ok()) << d.error;
  EXPECT_EQ(d.format_version, kFormatVersion);
  EXPECT_EQ(d.last_used_ns, 42u);
  EXPECT_EQ(d.manifest, manifest);
  EXPECT_EQ(d.kernel.cubin, k.cubin);
  EXPECT_EQ(d.kernel.lowered_names, k.lowered_names);
  EXPECT_EQ(d.kernel.registers, k.registers);
  EXPECT_EQ(d.kernel.shared_bytes, k.shared_bytes);
  EXPECT_EQ(d.kernel.local_bytes, k.local_bytes);
  EXPECT_DOUBLE_EQ(d.kernel.compile_ms, k.compile_ms);
  EXPECT_NE(d.kernel.log.find("not fatal"), std::string::npos);
}

TEST(EntryFormat, EmptyCubinAndLogAreFine) {
  const DecodedEntry d = decode_entry(encode_entry("{}", CompiledKernel{}, 0));
  ASSERT_TRUE(d.ok()) << d.error;
  EXPECT_TRUE(d.kernel.cubin.empty());
  EXPECT_EQ(d.kernel.registers, -1);
}

TEST(EntryFormat, StampIsOutsideTheChecksum) {
  std::string bytes = encode_entry("{}", fake_kernel(64, 2), 1);
  for (std::size_t i = kStampOffset; i < kStampOffset + 8; ++i) bytes[i] = static_cast<char>(0xa5);
  const DecodedEntry d = decode_entry(bytes);
  ASSERT_TRUE(d.ok()) << d.error;
  EXPECT_EQ(d.last_used_ns, 0xa5a5a5a5a5a5a5a5ull);
}

TEST(EntryFormat, EveryTruncationIsDetected) {
  const std::string bytes = encode_entry(fake_manifest("k").canonical(), fake_kernel(300, 3), 7);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    const DecodedEntry d = decode_entry(std::string_view(bytes).substr(0, n));
    EXPECT_FALSE(d.ok()) << "truncated to " << n << " bytes";
  }
  EXPECT_FALSE(decode_entry(bytes + "x").ok()) << "trailing garbage";
}

TEST(EntryFormat, EveryBitFlipOutsideTheStampIsDetected) {
  const std::string bytes = encode_entry(fake_manifest("k").canonical(), fake_kernel(64, 4), 7);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (i >= kStampOffset && i < kStampOffset + 8) continue;
    for (int bit = 0; bit < 8; ++bit) {
      std::string copy = bytes;
      copy[i] = static_cast<char>(copy[i] ^ (1 << bit));
      EXPECT_FALSE(decode_entry(copy).ok()) << "byte " << i << " bit " << bit;
    }
  }
}

TEST(EntryFormat, OtherVersionsAndForeignBytesAreRejectedWithAReason) {
  const std::string v2 = encode_entry("{}", fake_kernel(64, 5), 7, kFormatVersion + 1);
  DecodedEntry d = decode_entry(v2);
  EXPECT_FALSE(d.ok());
  EXPECT_EQ(d.format_version, kFormatVersion + 1);
  EXPECT_NE(d.error.find("format version"), std::string::npos) << d.error;

  d = decode_entry(std::string(200, 'z'));
  EXPECT_NE(d.error.find("bad magic"), std::string::npos) << d.error;
  d = decode_entry("");
  EXPECT_NE(d.error.find("truncated"), std::string::npos) << d.error;
}

// --- golden file ------------------------------------------------------------------
//
// tests/cache/golden/kernel_v<kFormatVersion>.spk is an entry written by this encoder
// from the fixed inputs below. Re-encoding must reproduce it byte for byte, so any change
// to the file layout, the manifest canonicalisation or the metadata encoding fails here.
// Such a change must bump kFormatVersion (cache/format.hpp); then regenerate with
//   SPATTN_UPDATE_GOLDEN=1 ./test_cache --gtest_filter='GoldenFile.*'
// and commit the new file (the old version's file may be deleted).

KernelManifest golden_manifest() {
  KernelManifest m;
  m.source = "extern \"C\" __global__ void spattn_golden(float* o) { o[threadIdx.x] = 1.0f; }\n";
  m.template_hashes = {{"params.cuh", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
                       {"forward.cuh", "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"}};
  m.options = {"--gpu-architecture=sm_90a", "-std=c++17", "-default-device"};
  m.arch = "sm_90a";
  m.nvrtc_version = "13.0";
  m.spattn_version = "0.1.0";
  m.kernel_name = "spattn_golden";
  return m;
}

CompiledKernel golden_kernel() {
  CompiledKernel k;
  for (int i = 0; i < 96; ++i) k.cubin.push_back(static_cast<char>((i * 37 + 11) & 0xff));
  k.log = "golden log line\n";
  k.lowered_names = {{"spattn_golden", "spattn_golden"}};
  k.registers = 40;
  k.shared_bytes = 1024;
  k.local_bytes = 0;
  k.compile_ms = 123.456;
  return k;
}

constexpr std::uint64_t kGoldenStamp = 1700000000123456789ull;

TEST(GoldenFile, ReencodingIsByteIdentical) {
  const std::filesystem::path golden =
      std::filesystem::path(SPATTN_CACHE_GOLDEN_DIR) / ("kernel_v" + std::to_string(kFormatVersion) + ".spk");
  const std::string encoded = encode_entry(canonical_manifest(golden_manifest(), kFormatVersion),
                                           golden_kernel(), kGoldenStamp);
  if (const char* update = std::getenv("SPATTN_UPDATE_GOLDEN"); update && *update) {
    test::spit(golden, encoded);
    GTEST_SKIP() << "wrote " << golden;
  }
  ASSERT_TRUE(std::filesystem::exists(golden))
      << golden << " is missing: after bumping kFormatVersion, regenerate it (see this file)";
  const std::string stored = test::slurp(golden);
  EXPECT_TRUE(stored == encoded)
      << "the cache format changed without a version bump: bump kFormatVersion in cache/format.hpp "
         "and regenerate the golden file (see tests/cache/test_format.cpp)";
}

TEST(GoldenFile, Decodes) {
  const std::filesystem::path golden =
      std::filesystem::path(SPATTN_CACHE_GOLDEN_DIR) / ("kernel_v" + std::to_string(kFormatVersion) + ".spk");
  const DecodedEntry d = decode_entry(test::slurp(golden));
  ASSERT_TRUE(d.ok()) << d.error;
  EXPECT_EQ(d.last_used_ns, kGoldenStamp);
  EXPECT_EQ(d.manifest, canonical_manifest(golden_manifest(), kFormatVersion));
  const CompiledKernel k = golden_kernel();
  EXPECT_EQ(d.kernel.cubin, k.cubin);
  EXPECT_EQ(d.kernel.log, k.log);
  EXPECT_EQ(d.kernel.lowered_names, k.lowered_names);
  EXPECT_EQ(d.kernel.registers, 40);
  EXPECT_EQ(d.kernel.shared_bytes, 1024);
  EXPECT_EQ(d.kernel.local_bytes, 0);
  EXPECT_DOUBLE_EQ(d.kernel.compile_ms, 123.456);
  const ManifestSummary s = summarize_manifest(d.manifest);
  EXPECT_EQ(s.kernel_name, "spattn_golden");
  EXPECT_EQ(s.arch, "sm_90a");
  EXPECT_EQ(s.nvrtc_version, "13.0");
}

}  // namespace
}  // namespace spattn
