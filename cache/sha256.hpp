// SHA-256 through OpenSSL EVP: the cache key and the cache files' checksums. Small and
// free of cache concepts so other rooms can hash with it too.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace spattn::cache {

using Sha256Digest = std::array<std::uint8_t, 32>;

// Lower-case hex SHA-256 of `data` (64 characters).
std::string sha256_hex(std::string_view data);

// Lower-case hex of a digest.
std::string to_hex(const Sha256Digest& digest);

// Incremental SHA-256, for data that arrives in pieces (files, archives).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(std::string_view data);
  void update(const void* data, std::size_t size);
  // The digest of everything passed to update(); the object must not be updated after.
  Sha256Digest finish();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

}  // namespace spattn::cache
