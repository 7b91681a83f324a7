// CacheConfig::from_env and byte sizes.
#include <gtest/gtest.h>

#include "tests/cache/cache_test_util.hpp"

namespace spattn {
namespace {

using test::ScopedEnv;

TEST(ByteSize, Parses) {
  EXPECT_EQ(parse_byte_size("0"), 0u);
  EXPECT_EQ(parse_byte_size("1048576"), 1048576u);
  EXPECT_EQ(parse_byte_size("512K"), 512u << 10);
  EXPECT_EQ(parse_byte_size("512k"), 512u << 10);
  EXPECT_EQ(parse_byte_size("64M"), 64u << 20);
  EXPECT_EQ(parse_byte_size("64MiB"), 64u << 20);
  EXPECT_EQ(parse_byte_size("64mb"), 64u << 20);
  EXPECT_EQ(parse_byte_size(" 2G "), std::uint64_t{2} << 30);
  EXPECT_EQ(parse_byte_size("3 G"), std::uint64_t{3} << 30);
  EXPECT_EQ(parse_byte_size("1T"), std::uint64_t{1} << 40);
  EXPECT_EQ(parse_byte_size("100B"), 100u);
}

TEST(ByteSize, RejectsGarbage) {
  for (const char* bad : {"", " ", "G", "-1", "1.5G", "12X", "1GG", "1Kx", "0x10",
                          "99999999999999999999", "20000000000T"}) {
    EXPECT_FALSE(parse_byte_size(bad).has_value()) << "'" << bad << "'";
  }
}

class CacheEnv : public ::testing::Test {
 protected:
  // Every variable from_env reads, cleared for the test and restored after it.
  ScopedEnv dir_{"SPATTN_CACHE_DIR", std::nullopt};
  ScopedEnv xdg_{"XDG_CACHE_HOME", std::nullopt};
  ScopedEnv home_{"HOME", "/home/tester"};
  ScopedEnv max_{"SPATTN_CACHE_MAX_BYTES", std::nullopt};
  ScopedEnv off_{"SPATTN_DISABLE_CACHE", std::nullopt};
};

TEST_F(CacheEnv, DirectoryPrecedence) {
  EXPECT_EQ(CacheConfig::from_env().dir, "/home/tester/.cache/spattn");
  {
    ScopedEnv xdg("XDG_CACHE_HOME", "/xdg");
    EXPECT_EQ(CacheConfig::from_env().dir, "/xdg/spattn");
    ScopedEnv dir("SPATTN_CACHE_DIR", "/explicit");
    EXPECT_EQ(CacheConfig::from_env().dir, "/explicit");
  }
  ScopedEnv relative_xdg("XDG_CACHE_HOME", "relative/path");
  EXPECT_EQ(CacheConfig::from_env().dir, "/home/tester/.cache/spattn") << "relative XDG values are ignored";
}

TEST_F(CacheEnv, Defaults) {
  const CacheConfig c = CacheConfig::from_env();
  EXPECT_EQ(c.max_bytes, CacheConfig::kDefaultMaxBytes);
  EXPECT_FALSE(c.disabled);
}

TEST_F(CacheEnv, MaxBytes) {
  ScopedEnv max("SPATTN_CACHE_MAX_BYTES", "256M");
  EXPECT_EQ(CacheConfig::from_env().max_bytes, 256u << 20);
  ScopedEnv bad("SPATTN_CACHE_MAX_BYTES", "lots");
  try {
    CacheConfig::from_env();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("SPATTN_CACHE_MAX_BYTES"), std::string::npos) << e.what();
  }
}

TEST_F(CacheEnv, DisableValues) {
  for (const char* yes : {"1", "true", "YES", "on"}) {
    ScopedEnv off("SPATTN_DISABLE_CACHE", yes);
    EXPECT_TRUE(CacheConfig::from_env().disabled) << yes;
  }
  for (const char* no : {"0", "false", "no", "OFF", ""}) {
    ScopedEnv off("SPATTN_DISABLE_CACHE", no);
    EXPECT_FALSE(CacheConfig::from_env().disabled) << no;
  }
  ScopedEnv bad("SPATTN_DISABLE_CACHE", "maybe");
  try {
    CacheConfig::from_env();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("SPATTN_DISABLE_CACHE"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace spattn
