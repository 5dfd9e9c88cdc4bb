// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title AnchorRegistry: the Merkle roots of Agora's ledger batches, one per batch id.
/// @notice Only the owner (the deployer) anchors; a batch id is anchored once and never changes.
contract AnchorRegistry {
    address private immutable _owner;
    mapping(uint256 => bytes32) private _roots;

    event Anchored(uint256 indexed batchId, bytes32 root, uint64 count);

    error NotOwner();
    error AlreadyAnchored(uint256 batchId);
    error EmptyRoot();

    constructor() {
        _owner = msg.sender;
    }

    function anchor(uint256 batchId, bytes32 root, uint64 count) external {
        if (msg.sender != _owner) revert NotOwner();
        if (root == bytes32(0)) revert EmptyRoot();
        if (_roots[batchId] != bytes32(0)) revert AlreadyAnchored(batchId);
        _roots[batchId] = root;
        emit Anchored(batchId, root, count);
    }

    function roots(uint256 batchId) external view returns (bytes32) {
        return _roots[batchId];
    }
}
