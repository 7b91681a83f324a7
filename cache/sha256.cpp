#include "cache/sha256.hpp"

#include <openssl/evp.h>

#include "common/check.hpp"

namespace spattn::cache {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  if (ctx_->md == nullptr || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) {
    SPATTN_FAIL(ErrorCode::kInternal, "OpenSSL could not initialise SHA-256");
  }
}

Sha256::~Sha256() = default;

void Sha256::update(const void* data, std::size_t size) {
  if (size != 0 && EVP_DigestUpdate(ctx_->md, data, size) != 1) {
    SPATTN_FAIL(ErrorCode::kInternal, "OpenSSL SHA-256 update failed");
  }
}

void Sha256::update(std::string_view data) { update(data.data(), data.size()); }

Sha256Digest Sha256::finish() {
  Sha256Digest digest{};
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(ctx_->md, digest.data(), &length) != 1 || length != digest.size()) {
    SPATTN_FAIL(ErrorCode::kInternal, "OpenSSL SHA-256 finalisation failed");
  }
  return digest;
}

std::string to_hex(const Sha256Digest& digest) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(digest.size() * 2, '0');
  for (std::size_t i = 0; i < digest.size(); ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 0xf];
  }
  return out;
}

std::string sha256_hex(std::string_view data) {
  Sha256 hash;
  hash.update(data);
  return to_hex(hash.finish());
}

}  // namespace spattn::cache
