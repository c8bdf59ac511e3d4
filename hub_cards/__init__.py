"""Model cards and Hub publishing of searched EvoNets; see issue 7."""
