// dsv3/tokenizer.hpp — moved to text/tokenizer.hpp (the text stack live in text/); kept so that existing #includes compile.
#pragma once

#include "text/tokenizer.hpp"
