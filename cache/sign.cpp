#include "cache/sign.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include <spattn/cache.hpp>

#include "cache/format.hpp"
#include "cache/sha256.hpp"
#include "common/check.hpp"
#include "common/text.hpp"

namespace spattn::cache {

namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct FileClose {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

std::string shown(const std::filesystem::path& p) { return detail::printable(p.string()); }

std::string openssl_error() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no details";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

std::unique_ptr<std::FILE, FileClose> open_pem(const std::filesystem::path& path) {
  // A key is a small regular file: O_NONBLOCK so that a FIFO does not hang the open.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) SPATTN_FAIL(ErrorCode::kIo, "cannot read key '{}': {}", shown(path), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (1 << 16)) {
    ::close(fd);
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "key '{}' is not a PEM key file", shown(path));
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  std::FILE* f = ::fdopen(fd, "r");
  if (f == nullptr) {
    ::close(fd);
    SPATTN_FAIL(ErrorCode::kIo, "cannot read key '{}': {}", shown(path), std::strerror(errno));
  }
  return std::unique_ptr<std::FILE, FileClose>(f);
}

std::string raw_public(EVP_PKEY* key, const std::filesystem::path& path) {
  std::string raw(kPublicKeyBytes, '\0');
  std::size_t n = raw.size();
  if (EVP_PKEY_get_raw_public_key(key, reinterpret_cast<unsigned char*>(raw.data()), &n) != 1 || n != raw.size()) {
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "key '{}': no Ed25519 public key ({})", shown(path), openssl_error());
  }
  return raw;
}

void require_ed25519(EVP_PKEY* key, const std::filesystem::path& path, const char* what) {
  if (key == nullptr) {
    SPATTN_FAIL(ErrorCode::kInvalidArgument, "'{}' is not a PEM {} ({})", shown(path), what, openssl_error());
  }
  if (EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
    SPATTN_FAIL(ErrorCode::kInvalidArgument,
                "'{}' is not an Ed25519 key (make one with 'spattn cache keygen' or 'openssl genpkey -algorithm "
                "ed25519')",
                shown(path));
  }
}

}  // namespace

SigningKey::SigningKey(const std::filesystem::path& pem) {
  auto f = open_pem(pem);
  Pkey key(PEM_read_PrivateKey(f.get(), nullptr, nullptr, nullptr));
  require_ed25519(key.get(), pem, "private key");
  public_ = raw_public(key.get(), pem);
  key_ = key.release();
}

SigningKey::~SigningKey() { EVP_PKEY_free(static_cast<EVP_PKEY*>(key_)); }

std::string SigningKey::sign(std::string_view message) const {
  std::unique_ptr<EVP_MD_CTX, CtxFree> ctx(EVP_MD_CTX_new());
  std::string sig(kSignatureBytes, '\0');
  std::size_t n = sig.size();
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, static_cast<EVP_PKEY*>(key_)) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &n,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1 ||
      n != sig.size()) {
    SPATTN_FAIL(ErrorCode::kInternal, "Ed25519 signing failed: {}", openssl_error());
  }
  return sig;
}

std::string load_public_key(const std::filesystem::path& pem) {
  std::string text;
  {
    auto f = open_pem(pem);
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f.get())) > 0;) text.append(buf, n);
  }
  // A public key file, or a private key whose public half is wanted.
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())), BIO_free);
  Pkey key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    bio.reset(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
    key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  }
  require_ed25519(key.get(), pem, "public key");
  return raw_public(key.get(), pem);
}

bool verify_signature(std::string_view public_key, std::string_view message, std::string_view signature) {
  if (public_key.size() != kPublicKeyBytes || signature.size() != kSignatureBytes) return false;
  Pkey key(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr,
                                       reinterpret_cast<const unsigned char*>(public_key.data()), public_key.size()));
  std::unique_ptr<EVP_MD_CTX, CtxFree> ctx(EVP_MD_CTX_new());
  const bool ok = key && ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) == 1 &&
                  EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                                   signature.size(), reinterpret_cast<const unsigned char*>(message.data()),
                                   message.size()) == 1;
  ERR_clear_error();
  return ok;
}

std::string fingerprint(std::string_view public_key) { return "SHA256:" + sha256_hex(public_key).substr(0, 16); }

void generate_key_pair(const std::filesystem::path& private_pem, const std::filesystem::path& public_pem) {
  Pkey key;
  {
    std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr),
                                                                     EVP_PKEY_CTX_free);
    EVP_PKEY* raw = nullptr;
    if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
      SPATTN_FAIL(ErrorCode::kInternal, "Ed25519 key generation failed: {}", openssl_error());
    }
    key.reset(raw);
  }
  auto write = [&](const std::filesystem::path& path, mode_t mode, bool is_private) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) SPATTN_FAIL(ErrorCode::kIo, "cannot create '{}': {}", shown(path), std::strerror(errno));
    std::unique_ptr<std::FILE, FileClose> f(::fdopen(fd, "w"));
    if (!f) {
      ::close(fd);
      SPATTN_FAIL(ErrorCode::kIo, "cannot write '{}': {}", shown(path), std::strerror(errno));
    }
    const int ok = is_private ? PEM_write_PrivateKey(f.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr)
                              : PEM_write_PUBKEY(f.get(), key.get());
    if (ok != 1 || std::fflush(f.get()) != 0 || ::fsync(::fileno(f.get())) != 0) {
      SPATTN_FAIL(ErrorCode::kIo, "cannot write '{}': {}", shown(path), openssl_error());
    }
  };
  write(private_pem, 0600, true);
  try {
    write(public_pem, 0644, false);
  } catch (...) {
    ::unlink(private_pem.c_str());
    throw;
  }
}

}  // namespace spattn::cache

namespace spattn {

void generate_signing_key(const std::filesystem::path& private_key, const std::filesystem::path& public_key) {
  cache::generate_key_pair(private_key, public_key);
}

std::string key_fingerprint(const std::filesystem::path& public_key) {
  return cache::fingerprint(cache::load_public_key(public_key));
}

}  // namespace spattn
